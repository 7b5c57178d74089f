// What the host takes from an agent about a probe it runs (a hello's list, a load's result). The
// agent names it, so everything is checked: a probe the agent describes beyond these limits, with
// a name the host's own plugins use, or with no name at all, is refused (its records are told by
// handle), and event names that are no names are left out.
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { HOST_PLUGIN_NAMES, isName } from '../../contract/names.js';

export interface ProbeInfo {
  handle: number;
  name: string;
  instance: number;
  version: string;
  params: Record<string, string>;
  events: Map<number, string>;
  /** the module's digest as the agent reports it (hex; '' when it gave none or an overlong one) */
  digest: string;
  /** what the guest's kernel lacks that the probe runs without (at most MAX_PROBE_WARNINGS, each cut to MAX_WARNING_CHARS) */
  warnings: ProbeWarning[];
}

export interface ProbeWarning {
  code: string;
  message: string;
}

/** The longest probe name the host takes from an agent; event and parameter names too. */
export const MAX_PROBE_NAME = 64;
/**
 * What else the host takes from an agent about a probe it runs: the version (a semver string),
 * its parameters (the host's own values, echoed back: a kprobe's fetch arguments are the
 * longest), and how many events and parameters. A probe the agent describes beyond these is
 * refused like a probe with a bad name: a guest must not make the host hold (or `vesper status`
 * print, or every stored event carry) a megabyte per probe.
 */
export const MAX_PROBE_VERSION = 64;
export const MAX_PARAM_VALUE = 4096;
export const MAX_PROBE_PARAMS = 64;
export const MAX_PROBE_EVENTS = 256;
/** A probe's warnings the host keeps (the agent's own bound is 16): more are dropped, longer ones cut. */
export const MAX_PROBE_WARNINGS = 16;
export const MAX_WARNING_CHARS = 512;

/** The warnings an agent gives with a probe, bounded, each with a VSP_* code (else VSP_KERNEL_LACKS). */
function warningsOf(ws: readonly pb.IError[] | null | undefined): ProbeWarning[] {
  return (ws ?? []).slice(0, MAX_PROBE_WARNINGS).map((w) => ({
    code: /^VSP_[A-Z_]{1,60}$/.test(w.code ?? '') ? (w.code as string) : ErrorCode.KERNEL_LACKS,
    message: (w.message ?? '').slice(0, MAX_WARNING_CHARS),
  }));
}

/** A probe as the agent describes it, checked: its info, or why it is refused (and then only its handle). */
export function probeOfAgent(l: pb.ILoadedProbe): { info: ProbeInfo; refused: VesperError | null } {
  const handle = l.handle ?? 0;
  const name = l.name ?? '';
  const version = l.version ?? '';
  const params = l.params ?? [];
  const events = l.events ?? [];
  const tooLong =
    version.length > MAX_PROBE_VERSION
      ? `a ${version.length}-character version`
      : params.length > MAX_PROBE_PARAMS
        ? `${params.length} parameters`
        : events.length > MAX_PROBE_EVENTS
          ? `${events.length} events`
          : params.some((p) => (p.name ?? '').length > MAX_PROBE_NAME || (p.value ?? '').length > MAX_PARAM_VALUE)
            ? 'an overlong parameter'
            : '';
  if (tooLong !== '' || handle === 0 || name.length > MAX_PROBE_NAME || !isName(name) || HOST_PLUGIN_NAMES.has(name)) {
    const refused = new VesperError(
      ErrorCode.PROTOCOL_UNEXPECTED,
      `agent claims a probe ${JSON.stringify(name.slice(0, 64))}${tooLong ? ` with ${tooLong}` : ''} at handle ${handle}: refused, its records are told by handle`,
    );
    // nothing of what it sent is kept: a refused probe is its handle
    return {
      info: {
        handle,
        name: `handle-${handle}`,
        instance: l.instance ?? 0,
        version: '',
        params: {},
        events: new Map(),
        digest: '',
        warnings: [],
      },
      refused,
    };
  }
  const info: ProbeInfo = {
    handle,
    name,
    instance: l.instance ?? 0,
    version,
    params: Object.fromEntries(params.map((p) => [p.name ?? '', p.value ?? ''])),
    digest: l.digest && l.digest.length <= 64 ? Buffer.from(l.digest).toString('hex') : '',
    warnings: warningsOf(l.warnings),
    // an event name is a name, and no longer than a probe's: every stored event of it carries it
    events: new Map(
      events.filter((e) => (e.name ?? '').length <= MAX_PROBE_NAME && isName(e.name ?? '')).map((e) => [e.id ?? 0, e.name ?? '']),
    ),
  };
  return { info, refused: null };
}
