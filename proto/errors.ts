// One catalogue of error codes for the whole project. Codes are stable strings: scripts and
// the host match on them, so a code, once shipped, keeps its meaning. Messages may change.

export const ErrorCode = {
  // framing and protocol
  FRAME_TOO_LARGE: 'VSP_FRAME_TOO_LARGE',
  FRAME_CRC: 'VSP_FRAME_CRC',
  FRAME_GARBAGE: 'VSP_FRAME_GARBAGE',
  FRAME_TRUNCATED: 'VSP_FRAME_TRUNCATED',
  FRAME_BAD_LENGTH: 'VSP_FRAME_BAD_LENGTH',
  MESSAGE_DECODE: 'VSP_MESSAGE_DECODE',
  PROTOCOL_VERSION: 'VSP_PROTOCOL_VERSION',
  PROTOCOL_UNEXPECTED: 'VSP_PROTOCOL_UNEXPECTED',
  HANDSHAKE_TIMEOUT: 'VSP_HANDSHAKE_TIMEOUT',
  REQUEST_TIMEOUT: 'VSP_REQUEST_TIMEOUT',
  DISCONNECTED: 'VSP_DISCONNECTED',
  /** a guest sent more than its ingest budget: its link is read more slowly, nothing is dropped */
  INGEST_THROTTLED: 'VSP_INGEST_THROTTLED',
  CONNECT_FAILED: 'VSP_CONNECT_FAILED',
  // probe modules
  PROBE_UNSIGNED: 'VSP_PROBE_UNSIGNED',
  PROBE_BAD_SIGNATURE: 'VSP_PROBE_BAD_SIGNATURE',
  PROBE_DIGEST_MISMATCH: 'VSP_PROBE_DIGEST_MISMATCH',
  PROBE_UNKNOWN_KEY: 'VSP_PROBE_UNKNOWN_KEY',
  PROBE_BAD_MANIFEST: 'VSP_PROBE_BAD_MANIFEST',
  PROBE_AGENT_VERSION: 'VSP_PROBE_AGENT_VERSION',
  PROBE_BAD_PARAM: 'VSP_PROBE_BAD_PARAM',
  PROBE_LOAD_FAILED: 'VSP_PROBE_LOAD_FAILED',
  PROBE_CRASHED: 'VSP_PROBE_CRASHED',
  PROBE_NOT_FOUND: 'VSP_PROBE_NOT_FOUND',
  PROBE_ALREADY_LOADED: 'VSP_PROBE_ALREADY_LOADED',
  // a probe whose code did not return (a loop): the agent restarted without it
  PROBE_LOOPED: 'VSP_PROBE_LOOPED',
  PROBE_QUARANTINED: 'VSP_PROBE_QUARANTINED',
  // kernel event sources
  TRACEFS_UNAVAILABLE: 'VSP_TRACEFS_UNAVAILABLE',
  TRACEFS_EVENT_MISSING: 'VSP_TRACEFS_EVENT_MISSING',
  /** a trace event this kernel has lacks a field the probe reads (its format differs from the kernels it was written for) */
  TRACEFS_FIELD_MISSING: 'VSP_TRACEFS_FIELD_MISSING',
  TRACEFS_BAD_FILTER: 'VSP_TRACEFS_BAD_FILTER',
  TRACEFS_READERS_EXHAUSTED: 'VSP_TRACEFS_READERS_EXHAUSTED',
  KPROBE_UNAVAILABLE: 'VSP_KPROBE_UNAVAILABLE',
  KPROBE_BAD_DEFINITION: 'VSP_KPROBE_BAD_DEFINITION',
  /** a kprobe on a function this kernel does not have (renamed, inlined, compiled out) */
  KPROBE_NO_SYMBOL: 'VSP_KPROBE_NO_SYMBOL',
  PSI_UNAVAILABLE: 'VSP_PSI_UNAVAILABLE',
  CGROUP_UNAVAILABLE: 'VSP_CGROUP_UNAVAILABLE',
  /**
   * not an error: a loaded probe's warning that the guest's kernel lacks something it runs
   * without (a trace event field, /dev/kmsg...), and what that costs; shown at attach and in status
   */
  KERNEL_LACKS: 'VSP_KERNEL_LACKS',
  // keys and files
  KEY_MISSING: 'VSP_KEY_MISSING',
  KEY_INVALID: 'VSP_KEY_INVALID',
  /**
   * enrolment (docs/trust.md): the agent trusts another host key than the one this host offers
   * (pinned on first contact, or given with --host-key); the host is refused until re-enrolment
   */
  HOST_KEY_MISMATCH: 'VSP_HOST_KEY_MISMATCH',
  USAGE: 'VSP_USAGE',
  INTERNAL: 'VSP_INTERNAL',
  // the probe catalogue or the agent bundle not where an install or a built checkout keeps them
  ASSETS_MISSING: 'VSP_ASSETS_MISSING',
  // libvirt (host/libvirt)
  LIBVIRT_UNAVAILABLE: 'VSP_LIBVIRT_UNAVAILABLE',
  DOMAIN_NOT_FOUND: 'VSP_DOMAIN_NOT_FOUND',
  LIBVIRT_CALL: 'VSP_LIBVIRT_CALL',
  // the manager (host/daemon, host/notify, host/store, host/actions, host/config)
  CONFIG_INVALID: 'VSP_CONFIG_INVALID',
  STORE_FAILED: 'VSP_STORE_FAILED',
  FILTER_INVALID: 'VSP_FILTER_INVALID',
  PLUGIN_NOT_FOUND: 'VSP_PLUGIN_NOT_FOUND',
  PARAM_UNKNOWN: 'VSP_PARAM_UNKNOWN',
  VM_NOT_FOUND: 'VSP_VM_NOT_FOUND',
  ACTION_FAILED: 'VSP_ACTION_FAILED',
  ACTION_RATE_LIMITED: 'VSP_ACTION_RATE_LIMITED',
  FENCE_FAILED: 'VSP_FENCE_FAILED',
  FENCE_LOCKED: 'VSP_FENCE_LOCKED',
  // failover (host/actions/failover.ts, docs/failures.md#failover): the standby's libvirt would not refuse
  // a second QEMU on the VM's disks (no lock manager, or a lockspace the primary does not share);
  // libvirt's lock manager refused to start a QEMU on disks another QEMU holds; the primary's
  // libvirt cannot be reached, so the VM cannot be fenced (a host failure: Pacemaker/STONITH's job)
  FAILOVER_UNGUARDED: 'VSP_FAILOVER_UNGUARDED',
  DISK_LOCKED: 'VSP_DISK_LOCKED',
  PRIMARY_UNREACHABLE: 'VSP_PRIMARY_UNREACHABLE',
  PERMISSION_DENIED: 'VSP_PERMISSION_DENIED',
  DAEMON_UNREACHABLE: 'VSP_DAEMON_UNREACHABLE',
  /** another vesperd holds this configuration's store (its lock beside the store) */
  DAEMON_RUNNING: 'VSP_DAEMON_RUNNING',
  // Pacemaker (host/actions/pacemaker.ts): its tools missing or its cluster not reachable here;
  // a VM, resource or node that Pacemaker does not know by the name vesper gave
  PACEMAKER_UNAVAILABLE: 'VSP_PACEMAKER_UNAVAILABLE',
  PACEMAKER_MAPPING: 'VSP_PACEMAKER_MAPPING',
  // analysis (host/analysis): `vesper analyze --last` found nothing failure-like for the VM
  ANALYSIS_NO_FAILURE: 'VSP_ANALYSIS_NO_FAILURE',
  // SSH (host/ssh): the host unreachable, silent past the bound, our credentials refused, its
  // key not on file or not the one on file, the link gone mid-way, a remote command failed
  SSH_CONNECT: 'VSP_SSH_CONNECT',
  SSH_TIMEOUT: 'VSP_SSH_TIMEOUT',
  SSH_AUTH: 'VSP_SSH_AUTH',
  SSH_HOSTKEY_UNKNOWN: 'VSP_SSH_HOSTKEY_UNKNOWN',
  SSH_HOSTKEY_CHANGED: 'VSP_SSH_HOSTKEY_CHANGED',
  SSH_DISCONNECTED: 'VSP_SSH_DISCONNECTED',
  SSH_REMOTE_FAILED: 'VSP_SSH_REMOTE_FAILED',
  // the agent on an SSH target (vesper agent install/uninstall/status)
  AGENT_NOT_INSTALLED: 'VSP_AGENT_NOT_INSTALLED',
  AGENT_NOT_ANSWERING: 'VSP_AGENT_NOT_ANSWERING',
  // the fleet bus (host/export/nats-sink.ts, vesper fleet): no NATS server answered, the stream
  // is not there, or JetStream did not acknowledge a publish (the sink retries the batch)
  BUS_UNAVAILABLE: 'VSP_BUS_UNAVAILABLE',
  BUS_STREAM_MISSING: 'VSP_BUS_STREAM_MISSING',
  BUS_PUBLISH_FAILED: 'VSP_BUS_PUBLISH_FAILED',
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Exit statuses for command-line tools, one place for the mapping. */
export function exitStatusFor(code: string): number {
  if (code === ErrorCode.USAGE || code === ErrorCode.FILTER_INVALID || code === ErrorCode.PARAM_UNKNOWN) return 2;
  if (code === ErrorCode.CONFIG_INVALID || code === ErrorCode.PACEMAKER_MAPPING) return 78; // EX_CONFIG
  if (code === ErrorCode.PERMISSION_DENIED || code === ErrorCode.SSH_AUTH) return 77; // EX_NOPERM
  if (code === ErrorCode.SSH_HOSTKEY_UNKNOWN || code === ErrorCode.SSH_HOSTKEY_CHANGED || code === ErrorCode.HOST_KEY_MISMATCH) return 76; // EX_PROTOCOL
  if (code === ErrorCode.SSH_CONNECT || code === ErrorCode.SSH_TIMEOUT || code === ErrorCode.SSH_DISCONNECTED) return 69; // EX_UNAVAILABLE
  if (code === ErrorCode.AGENT_NOT_INSTALLED) return 3;
  if (code === ErrorCode.KEY_MISSING) return 66; // EX_NOINPUT: a key file not there or not readable
  if (code === ErrorCode.AGENT_NOT_ANSWERING || code === ErrorCode.BUS_UNAVAILABLE || code === ErrorCode.BUS_PUBLISH_FAILED) return 69;
  if (code === ErrorCode.BUS_STREAM_MISSING) return 3;
  if (code === ErrorCode.DAEMON_UNREACHABLE || code === ErrorCode.PACEMAKER_UNAVAILABLE) return 69; // EX_UNAVAILABLE
  if (code === ErrorCode.DAEMON_RUNNING || code === ErrorCode.DISK_LOCKED) return 75; // EX_TEMPFAIL: held by another
  if (code === ErrorCode.FAILOVER_UNGUARDED) return 78; // EX_CONFIG: turn the lock manager on
  if (code === ErrorCode.PRIMARY_UNREACHABLE) return 69; // EX_UNAVAILABLE
  if (
    code === ErrorCode.VM_NOT_FOUND ||
    code === ErrorCode.DOMAIN_NOT_FOUND ||
    code === ErrorCode.PLUGIN_NOT_FOUND ||
    code === ErrorCode.ANALYSIS_NO_FAILURE
  )
    return 3;
  if (code === ErrorCode.CONNECT_FAILED || code === ErrorCode.DISCONNECTED) return 69; // EX_UNAVAILABLE
  if (code.startsWith('VSP_PROBE_')) return 65; // EX_DATAERR
  if (code.startsWith('VSP_TRACEFS_') || code.startsWith('VSP_KPROBE_') || code.startsWith('VSP_PSI_')) return 72; // EX_OSFILE
  return 1;
}

export class VesperError extends Error {
  readonly code: string;
  readonly detail: string;
  constructor(code: string, message: string, detail = '', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VesperError';
    this.code = code;
    this.detail = detail;
  }

  toWire(): { code: string; message: string; detail: string } {
    return { code: this.code, message: this.message, detail: this.detail };
  }

  static fromWire(e: { code?: string | null; message?: string | null; detail?: string | null } | null | undefined): VesperError {
    return new VesperError(e?.code || ErrorCode.INTERNAL, e?.message || 'unknown error', e?.detail || '');
  }

  /** Wraps anything thrown into a VesperError, keeping a code it already had. */
  static from(err: unknown, fallbackCode: string = ErrorCode.INTERNAL): VesperError {
    if (err instanceof VesperError) return err;
    const e = err as { code?: unknown; message?: unknown };
    const msg = typeof e?.message === 'string' ? e.message : String(err);
    return new VesperError(fallbackCode, msg, typeof e?.code === 'string' ? e.code : '', { cause: err });
  }
}
