// The answer of `vesper analyze`: one VM's failure window as a single timeline on the host's
// clock, the verdicts drawn from it with the events they rest on, and how guest clocks were
// put on the host's. Plain JSON: the daemon sends it as text, the CLI prints it or renders it
// as HTML, so nothing here may be a class, a Map or a bigint.

/** Where a failure lies: one service inside the guest, the whole guest, or the host under it. */
export type VerdictScope = 'service' | 'guest' | 'host';

/** `uncertain` when the evidence is thin (a heartbeat gap alone, say): a hint, not a finding. */
export type VerdictConfidence = 'confident' | 'uncertain';

export type VerdictKind =
  /** a process died of a fatal signal the kernel sent after a fault (SIGSEGV, SIGBUS, ...) */
  | 'app-crash'
  /**
   * a process was sent a fatal signal by another process (details name the sender, its parent
   * and unit), or by the kernel without a fault; whether it was planned vesper cannot tell
   */
  | 'app-killed'
  /** a stop vesper knows to be planned: SIGTERM/SIGKILL from PID 1 as the guest shut down */
  | 'planned-stop'
  /** the kernel's OOM killer chose a victim */
  | 'oom'
  /** the guest kernel panicked or the domain crashed */
  | 'guest-panic'
  /** userspace fell silent (heartbeat lost, watchdog) while the domain ran */
  | 'guest-hang'
  /** the agent went away while the guest lived */
  | 'agent-fault'
  /** the hypervisor reported an I/O error for the domain */
  | 'io-error'
  /** the channel to the guest lost records or the link itself */
  | 'channel-loss'
  /**
   * the domain stopped, shut down or rebooted without a crash (an operator, a tool, the guest
   * itself); details.rebooted is true for a reboot
   */
  | 'guest-stopped'
  /**
   * the host stopped the guest's clock (paused, saved, snapshotted, migrated it): the silence
   * around it is the pause's; not a failure of the guest
   */
  | 'host-paused'
  /** something failure-like happened but the evidence does not say what */
  | 'unknown';

export interface Verdict {
  kind: VerdictKind;
  scope: VerdictScope;
  confidence: VerdictConfidence;
  /** One sentence an operator can act on; names the process, signal, sender where known. */
  summary: string;
  /** Timeline entry ids (stored event ids) the verdict rests on, earliest first. */
  evidence: number[];
  /** Host µs of the event the verdict is about (the crash, the kill, the gap's start). */
  atUs: number;
  /** Facts behind the sentence, for machines: { signal: 'SIGSEGV', pid: 1234, comm: 'x', ... }. */
  details?: Record<string, unknown>;
}

export interface TimelineEntry {
  /** Stored event id. */
  id: number;
  /** When it happened on the host's clock (µs): guest time plus the run's offset for guest records. */
  timeUs: number;
  /** The guest's own wall-clock time (µs) for guest records; null for host events. */
  guestTimeUs: number | null;
  /** When the manager received or made the event (µs, host clock). */
  hostTimeUs: number;
  /** Which clock `timeUs` comes from: 'guest' (reconciled) or 'host' (as stored). */
  clock: 'guest' | 'host';
  /** Agent run for guest records (boot id + agent start), null for host events. */
  agentRun: string | null;
  plugin: string;
  instance: number;
  event: string;
  /** One line for humans: "signal SIGSEGV to 1234 (crasher) from the kernel (fault)". */
  description: string;
  /** The stored payload as is. */
  payload: Record<string, unknown>;
  /** True for the events a verdict cites. */
  evidence?: boolean;
}

/** How one agent run's guest clock was put on the host's. */
export interface ClockRun {
  agentRun: string;
  /** host µs − guest µs added to the run's guest times. */
  offsetUs: number;
  /** How many of the run's records in the window the estimate used. */
  records: number;
  /** Spread of (host − guest) over those records (max − min, µs): transit jitter and drift. */
  spreadUs: number;
  /** First and last guest record of the run in the window, host clock. */
  firstUs: number;
  lastUs: number;
}

export interface ClockReconciliation {
  /** 'min-transit' : offset = min over the run's records of (hostTimeUs − guestTimeUs). */
  method: 'min-transit';
  /** Plain-language account of the method and its bounds, for the report. */
  note: string;
  runs: ClockRun[];
}

export interface Analysis {
  /** Format version of this shape. */
  version: 1;
  vm: string;
  /** When the analysis was made (host µs). */
  generatedAtUs: number;
  /** The window of stored events analysed, host µs, inclusive. */
  window: { fromUs: number; toUs: number };
  /** How the window was chosen: around --at, around the last failure, or the given range. */
  anchor: { mode: 'at' | 'last'; atUs: number; eventId: number | null };
  timeline: TimelineEntry[];
  /** Most significant first. Empty when nothing failure-like is in the window. */
  verdicts: Verdict[];
  clocks: ClockReconciliation;
  /** Events of the window analysed (the timeline may show fewer; see omitted). */
  eventCount: number;
  /**
   * Events analysed but left out of the timeline, by reason: routine heartbeats (only those at
   * the edges of a gap are shown), and, for a very busy window, events far from the anchor.
   */
  omitted?: { heartbeats: number; distant: number };
  /** True when the window held more events than one analysis reads (the earliest were not read). */
  truncated?: boolean;
}
