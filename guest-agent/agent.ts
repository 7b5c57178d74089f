// The guest agent: owns the record ring, the probe runtime and the link to the host.
import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import * as os from 'node:os';
import { DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, type pb } from '../proto/codec.js';
import { ErrorCode } from '../proto/errors.js';
import { VESPER_VERSION } from '../proto/version.js';
import { Session } from './channel/session.js';
import type { Link, Transport } from './channel/transports.js';
import { KmsgSource } from './kernel/kmsg.js';
import { psiAvailable } from './kernel/pressure.js';
import { WallClock, monoNow } from './kernel/proc.js';
import { ReaderBudget, TraceFs, locateTracefs } from './kernel/tracefs.js';
import type { Logger } from './log.js';
import type { Capabilities } from '../contract/probe-api.js';
import { ProbeRuntime } from './modules/runtime.js';
import type { HostTrust } from './modules/host-trust.js';
import { RecordRing } from './ring/record-ring.js';
import { RunState } from './ring/run-state.js';
import { systemdState } from './systemd/system-state.js';
import { MainThreadWatchdog, markQuarantineTold, readQuarantine } from './modules/loop-watchdog.js';

export interface AgentOptions {
  transport: Transport;
  /** the host key(s) trusted, given or pinned on enrolment (host-trust.ts) */
  trust: HostTrust;
  log: Logger;
  ringRecords: number;
  ringBytes: number;
  traceBufferKb: number;
  tracefsPath?: string;
  maxFrameBytes?: number;
  /** thread-pool threads the tracefs readers may hold */
  readerThreads: number;
  /**
   * The run-state file (guest-agent/ring/run-state.ts): with it, what an agent crash lost is
   * reported by the next agent as a loss with its count. Without it, nothing is reported.
   */
  stateFile?: string;
  /** how long a probe's code may run without returning before its worker is terminated (ms) */
  loopStallMs?: number;
  /** events a probe's worker may have waiting before more are dropped and told as a loss */
  probeBacklog?: number;
  /** how long the agent's own main thread may be stuck before the agent kills itself (ms) */
  mainStallMs?: number;
}

export class Agent {
  readonly ring: RecordRing;
  readonly runtime: ProbeRuntime;
  readonly tracefs: TraceFs | null;
  readonly caps: Capabilities & { missing: string[]; tracefsPath: string };
  private session: Session | null = null;
  private readonly clock = new WallClock();
  private readonly kmsg = new KmsgSource();
  private readonly startMono = monoNow();
  private readonly bootId: string;
  private readonly runState: RunState;
  private persistScheduled = false;
  private readonly watchdog: MainThreadWatchdog | null;
  private reniced = false;
  /** stop() has begun: no new link is taken */
  private stopping = false;

  constructor(private readonly o: AgentOptions) {
    const missing: string[] = [];
    const tf = locateTracefs(o.tracefsPath);
    this.tracefs = tf.path ? new TraceFs(tf.path, new ReaderBudget(o.readerThreads)) : null;
    if (!this.tracefs) missing.push(tf.why);
    else {
      const stale = this.tracefs.removeStaleInstances('vesper.');
      if (stale.length) o.log.info({ stale }, 'removed tracing instances left by an earlier agent');
      if (!this.tracefs.kprobes)
        missing.push(`kprobe_events: ${tf.path}/kprobe_events does not exist (kernel built without CONFIG_KPROBE_EVENTS)`);
    }
    const psi = psiAvailable();
    if (!psi) missing.push('PSI: /proc/pressure/memory does not exist (CONFIG_PSI off or psi=0)');
    const cgroupV2 = existsSync('/sys/fs/cgroup/cgroup.controllers') || existsSync('/sys/fs/cgroup/unified/cgroup.controllers');
    if (!cgroupV2) missing.push('cgroup v2: no cgroup2 mount at /sys/fs/cgroup');
    const kmsg = this.kmsg.available;
    if (!kmsg) missing.push('/dev/kmsg is not readable');
    this.caps = {
      tracefs: Boolean(this.tracefs),
      kprobeEvents: Boolean(this.tracefs?.kprobes),
      psi,
      cgroupV2,
      kmsg,
      missing,
      tracefsPath: this.tracefs?.path ?? '',
    };
    this.bootId = readText('/proc/sys/kernel/random/boot_id');
    this.ring = new RecordRing(o.ringRecords, o.ringBytes, () => this.clock.now());
    this.runState = new RunState(o.stateFile ?? null, this.bootId);
    if (this.runState.ended.length) o.log.info({ ended: this.runState.ended }, 'earlier agent runs of this boot; told to the host');
    // Beside the run state: probes this agent or an earlier one found stuck in their code (loop-watchdog.ts).
    const qFile = o.stateFile ? `${o.stateFile}.quarantine` : null;
    const quarantine = qFile ? readQuarantine(qFile) : [];
    this.watchdog = o.stateFile ? new MainThreadWatchdog(o.mainStallMs ?? 10_000) : null;
    this.runtime = new ProbeRuntime({
      agentVersion: VESPER_VERSION,
      tracefs: this.tracefs,
      tracefsWhy: tf.why,
      kmsg: this.kmsg,
      clock: this.clock,
      caps: this.caps,
      keys: o.trust,
      log: o.log,
      append: (rec) => {
        const seq = this.ring.append(rec);
        this.schedulePersist();
        this.session?.schedulePump();
        return seq > 0;
      },
      instancePrefix: `vesper.${process.pid}.`,
      traceBufferKb: o.traceBufferKb,
      loopStallMs: o.loopStallMs ?? 3000,
      maxBacklog: o.probeBacklog,
      quarantineFile: qFile,
      quarantined: new Map(quarantine.map((q) => [q.digest, q])),
      // A probe's worker thread gets the agent's priority as the threads before it did.
      onThread: () => {
        if (this.reniced) reniceThreads();
      },
    });
    // Each quarantine is told to the host once, as a ProbeFault record of this run.
    const untold = quarantine.filter((q) => !q.told);
    if (qFile && untold.length) {
      for (const q of untold) {
        o.log.error(
          { probe: q.probe, stalledMs: q.stalledMs, digest: q.digest },
          'probe quarantined: stuck in its code in an earlier agent',
        );
        const c = this.clock.now();
        this.ring.append({
          monoNs: c.mono,
          wallNs: c.wall,
          handle: 0,
          eventId: 0,
          probeFault: {
            handle: q.handle,
            probe: q.probe,
            instance: 0,
            code: ErrorCode.PROBE_LOOPED,
            message: `stuck in its code for ${q.stalledMs} ms at ${new Date(q.at).toISOString()}; an earlier agent quarantined this module`,
            unloaded: true,
          },
        });
      }
      markQuarantineTold(qFile, quarantine);
    }
  }

  /** Keeps the agent alive and prompt when the guest is not: never the OOM victim, ahead of busy work. */
  protectSelf(): string[] {
    const done: string[] = [];
    try {
      writeFileSync('/proc/self/oom_score_adj', '-1000');
      done.push('oom_score_adj=-1000');
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'could not set oom_score_adj');
    }
    // On Linux a nice value belongs to one thread, and setpriority(0) changes the caller's
    // only. Node started its thread pool (the channel's reads and writes, the tracefs readers)
    // and V8's helpers before this runs: each is reniced by its thread id, or they would queue
    // behind a busy guest's work while the main thread is ahead of it. Threads made later
    // inherit the main thread's value; each probe's worker is reniced again when it starts
    // all the same (runtime's onThread), so that it does not depend on which thread made it.
    try {
      const threads = reniceThreads();
      this.reniced = true;
      done.push(`nice=-10 (${threads} threads)`);
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'could not raise priority');
    }
    return done;
  }

  /** The run-state file catches up with the ring once per turn that numbered records. */
  private schedulePersist(): void {
    if (this.persistScheduled || !this.o.stateFile) return;
    this.persistScheduled = true;
    setImmediate(() => {
      this.persistScheduled = false;
      this.runState.note(this.ring.lastSeq);
    });
  }

  hello(): pb.IHello {
    return {
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: VESPER_VERSION,
      kernelRelease: os.release(),
      bootId: this.bootId,
      hostname: os.hostname(),
      cpus: this.tracefs?.cpus.length ?? os.cpus().length,
      capabilities: {
        tracefs: this.caps.tracefs,
        kprobeEvents: this.caps.kprobeEvents,
        psi: this.caps.psi,
        cgroupV2: this.caps.cgroupV2,
        kmsg: this.caps.kmsg,
        tracefsPath: this.caps.tracefsPath,
        missing: this.caps.missing,
      },
      agentStartMonoNs: this.startMono,
      firstUnackedSeq: this.ring.firstSeq,
      lastSeq: this.ring.lastSeq,
      loaded: this.runtime.list(),
      ringCapacity: this.ring.capacityRecords,
      maxFrameBytes: this.o.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      agentPid: process.pid,
      endedRuns: this.runState.ended.map((r) => ({ bootId: r.bootId, agentPid: r.agentPid, lastSeq: r.lastSeq })),
      ...this.o.trust.helloFields(),
    };
  }

  async start(): Promise<void> {
    await this.o.transport.start((link) => this.onLink(link));
    this.o.log.info({ transport: this.o.transport.describe, caps: this.caps }, 'agent ready');
  }

  private onLink(link: Link): void {
    // A stopping agent takes no new link: the host would answer its hello and push probes that
    // are being unloaded, to an agent that leaves before it can answer.
    if (this.stopping) {
      link.stream.destroy();
      return;
    }
    // One host at a time: a new connection means the host came back; the old one is dead.
    if (this.session) this.session.close('replaced by a new link');
    const s = new Session(
      link.stream,
      link.describe,
      {
        ring: this.ring,
        runtime: this.runtime,
        log: this.o.log,
        hello: () => this.hello(),
        // Nothing leaves before the run-state file has its number (see run-state.ts).
        beforeSend: () => this.runState.note(this.ring.lastSeq),
        maxFrameBytes: this.o.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
        onHelloAck: (ack, nonce) => this.o.trust.onHelloAck(ack, nonce),
      },
      (closed) => {
        if (this.session === closed) this.session = null;
      },
    );
    this.session = s;
  }

  /**
   * Stops the agent. Told by `signal` (a service manager's SIGTERM): the last record of this run
   * says so, with whether the guest is going down (systemd's state), and is written out to the
   * host before the link closes (at most STOPPING_FLUSH_MS), so that the silence after it is
   * known to be planned.
   */
  async stop(signal?: string): Promise<void> {
    this.stopping = true;
    if (signal) await this.sayStopping(signal);
    // taking no new link from now on (a unix listener's stop ends once its links have closed)
    const transportStopped = this.o.transport.stop();
    this.session?.close('agent stopping');
    await this.runtime.stopAll();
    await this.kmsg.stop();
    await transportStopped;
    this.runState.note(this.ring.lastSeq);
    this.runState.close();
    await this.watchdog?.stop();
  }

  private async sayStopping(signal: string): Promise<void> {
    const c = this.clock.now();
    const asked = performance.now();
    const { state: systemState, via, error } = await systemdState(SYSTEMD_STATE_MS);
    this.ring.append({ monoNs: c.mono, wallNs: c.wall, handle: 0, eventId: 0, agentStopping: { signal, systemState } });
    this.o.log.info(
      { signal, systemState: systemState || null, via, error, askedMs: Math.round(performance.now() - asked) },
      'telling the host this agent stops',
    );
    await this.session?.flush(STOPPING_FLUSH_MS);
  }
}

/**
 * How long a stopping agent waits for systemd to say its state. PID 1, busy stopping a TCG guest,
 * answered in 1.0-2.6 s here (0.25 s at rest). Not longer: in the Debian 12 fault tests PID 1
 * answered only after the agent had exited, however long it waited (6, 10, 30 and 60 s), and the
 * wait delays the guest's shutdown. Without the state, the host still knows a shutdown by the
 * guest going down soon after with no agent back (host/analysis/verdicts/stops.ts).
 */
const SYSTEMD_STATE_MS = 10_000;

/** How long a stopping agent waits for its last records to be written out to the host. */
const STOPPING_FLUSH_MS = 1500;

/** Sets nice -10 on every thread of the agent; returns how many it changed. */
function reniceThreads(): number {
  os.setPriority(0, -10);
  let threads = 1;
  for (const tid of readdirSync('/proc/self/task')) {
    if (Number(tid) === process.pid) continue;
    try {
      os.setPriority(Number(tid), -10);
      threads++;
    } catch {
      /* the thread ended meanwhile */
    }
  }
  return threads;
}

function readText(p: string): string {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return '';
  }
}
