// Plugin parameters are text, as an operator types them; the plugin's description says what
// each one is. The parsing rules are the guest agent's own (guest-agent/modules/params.ts), so
// a value the host accepts for a probe is never refused by the agent it is pushed to.
import { parseParam } from '../../guest-agent/modules/params.js';
import type { ParamType as GuestParamType } from '../../guest-agent/modules/api.js';

export type ParamType = 'string' | 'int' | 'bool' | 'list' | 'duration';

export const PARAM_TYPES: readonly ParamType[] = ['string', 'int', 'bool', 'list', 'duration'];

const GUEST_TYPE: Record<ParamType, GuestParamType> = {
  string: 'string',
  int: 'int',
  bool: 'bool',
  list: 'list',
  duration: 'duration_ms',
};

/** Throws VesperError(PROBE_BAD_PARAM) naming the parameter and the value when `text` is not a `type`. */
export function checkParamValue(name: string, type: ParamType, text: string): void {
  parseParam({ name, type: GUEST_TYPE[type], default: '', description: '' }, text);
}

/** A probe manifest's parameter type as the framework names it. */
export function paramTypeOfManifest(t: GuestParamType): ParamType {
  return t === 'duration_ms' ? 'duration' : t;
}
