// Plugin parameters are text, as an operator types them; the plugin's description says what
// each one is. The parsing rules are the guest agent's own (contract/params.ts), so
// a value the host accepts for a probe is never refused by the agent it is pushed to.
import { parseParam } from '../../contract/params.js';
import type { ParamType as ManifestParamType } from '../../contract/probe-api.js';

/** A plugin parameter's type as the framework names it (a probe manifest says duration_ms for duration). */
export type PluginParamType = 'string' | 'int' | 'bool' | 'list' | 'duration';

export const PARAM_TYPES: readonly PluginParamType[] = ['string', 'int', 'bool', 'list', 'duration'];

const MANIFEST_TYPE: Record<PluginParamType, ManifestParamType> = {
  string: 'string',
  int: 'int',
  bool: 'bool',
  list: 'list',
  duration: 'duration_ms',
};

/** Throws VesperError(PROBE_BAD_PARAM) naming the parameter and the value when `text` is not a `type`. */
export function checkParamValue(name: string, type: PluginParamType, text: string): void {
  parseParam({ name, type: MANIFEST_TYPE[type], default: '', description: '' }, text);
}

/** A probe manifest's parameter type as the framework names it. */
export function paramTypeOfManifest(t: ManifestParamType): PluginParamType {
  return t === 'duration_ms' ? 'duration' : t;
}
