// The contract between the agent and a probe module. A probe module is one bundled ES
// module whose default export is a ProbeModule; it imports nothing from the agent at run
// time (these are types only) and reaches the kernel solely through the context it is
// given, so the agent knows everything a probe attached and can release all of it.
// Each load runs in a worker thread of its own (probe-worker.ts): the context's calls are
// synchronous as written here, but the probe shares no memory with the agent, and a loop or
// an uncaught throw ends only its worker.
import type { pb } from '../proto/codec.js';

export type ParamType = 'string' | 'int' | 'bool' | 'list' | 'duration_ms';
export type ParamValue = string | number | boolean | string[];

export interface ManifestParam {
  name: string;
  type: ParamType;
  default: string;
  description: string;
}

export interface ManifestEvent {
  id: number;
  name: string;
  /** Which Record payload the event uses: signal, oom, exec, exit, fork, psi, kprobe, heartbeat, generic. */
  payload: string;
  description: string;
}

export interface ProbeManifest {
  name: string;
  version: string;
  /** semver range of agent versions the module works with */
  agent: string;
  description: string;
  events: ManifestEvent[];
  params: ManifestParam[];
  /** the most instances one load may ask for */
  maxInstances: number;
}

export interface TraceEvent {
  /** kernel time (trace clock "mono"), ns */
  ts: number;
  cpu: number;
  /** the task that was current when the event fired (common_pid) */
  pid: number;
  fields: Record<string, number | string>;
}

export interface KmsgLine {
  seq: number;
  /** kernel time of the message, ns (CLOCK_MONOTONIC scale) */
  ts: number;
  level: number;
  text: string;
}

export interface PsiSample {
  resource: string;
  kind: 'some' | 'full';
  stallUs: number;
  windowUs: number;
  thresholdUs: number;
  avg10: number;
  source: string;
}

export interface EventPayload {
  signal?: pb.ISignalEvent;
  oom?: pb.IOomEvent;
  exec?: pb.IExecEvent;
  exit?: pb.IExitEvent;
  fork?: pb.IForkEvent;
  psi?: pb.IPsiEvent;
  kprobe?: pb.IKprobeEvent;
  heartbeat?: pb.IHeartbeatEvent;
  generic?: { fields: pb.IKprobeField[] };
}

export interface Capabilities {
  tracefs: boolean;
  kprobeEvents: boolean;
  psi: boolean;
  cgroupV2: boolean;
  kmsg: boolean;
}

export interface ProbeContext {
  readonly name: string;
  readonly instance: number;
  readonly handle: number;
  readonly params: Readonly<Record<string, ParamValue>>;
  readonly capabilities: Readonly<Capabilities>;
  log(msg: string): void;

  /**
   * Enables a trace event in this probe's own tracing instance, filtered in the kernel.
   * `fields`: the fields the handler reads; a kernel whose format of the event lacks one
   * refuses the load (VSP_TRACEFS_FIELD_MISSING) instead of handing the probe undefined values.
   */
  trace(system: string, event: string, filter: string, handler: (ev: TraceEvent) => void, fields?: readonly string[]): void;
  /** Whether the running kernel has the event, and whether its format has a field. */
  hasTraceEvent(system: string, event: string, field?: string): boolean;
  /** Defines a kprobe ("symbol [fetchargs]") and enables it like trace(); returns its event name. */
  kprobe(spec: string, filter: string, handler: (ev: TraceEvent) => void): string;
  /**
   * Kernel log lines (/dev/kmsg) from now on. With `opts.match`, only lines whose text contains
   * one of those strings are handed to the probe: the rest are dropped on the agent's main
   * thread, so a busy kernel log does not wake the probe's worker for every line.
   */
  kmsg(handler: (line: KmsgLine) => void, opts?: { match?: string[] }): void;
  /** Fires when stalled time within a sliding window crosses a threshold (PSI). */
  pressure(
    opts: { resource: 'memory' | 'io' | 'cpu'; kind: 'some' | 'full'; thresholdUs: number; windowUs: number; cgroup?: string },
    handler: (s: PsiSample) => void,
  ): void;
  /** Changes of a cgroup v2 memory.events file, as counter deltas. */
  memoryEvents(cgroupPath: string, handler: (delta: Record<string, number>) => void): void;
  every(ms: number, fn: () => void): void;
  after(ms: number, fn: () => void): void;

  /** Queues a record. Returns false if the agent's ring was full (the loss is counted). */
  emit(event: string, payload: EventPayload, tsNs?: number): boolean;
  /** Reports events the probe itself had to drop. */
  lost(count: number): void;
  /**
   * Says what this kernel lacks that the probe runs without, and what that costs ("no X:
   * Y is not reported"): kept with the loaded probe (code VSP_KERNEL_LACKS) and shown by
   * `vesper attach` and `vesper status`, so that nothing a kernel lacks is silently ignored.
   */
  lacks(message: string): void;

  /** A task's name, from /proc (cached briefly); "" when it is gone. */
  comm(pid: number): string;
  /** Fields of /proc/<pid>/status (Tgid, VmRSS, ...); undefined when it is gone. */
  procStatus(pid: number): Record<string, string> | undefined;
  /** Current CLOCK_MONOTONIC, ns. */
  now(): number;
}

export interface ProbeModule {
  setup(ctx: ProbeContext): void | Promise<void>;
  /** Called before the agent releases what setup attached. */
  teardown?(ctx: ProbeContext): void | Promise<void>;
}
