// ProbeWorker: one worker thread per probe load; the probe's code runs there and nowhere else.
//
// A probe module is evaluated inside its own worker_threads Worker (its code:
// ../worker/probe-host.ts), and every instance of one load shares that worker. The kernel
// side stays on the agent's main thread: the tracing instance, kprobes, tracefs readers,
// kernel-log subscription, PSI and cgroup watchers are attached and released there
// (runtime.ts), and their events are handed to the worker in batches, one message per turn of
// the main thread. So a worker that loops or dies holds nothing the main thread cannot
// release: its fds, kernel objects and readers were never its own. What stays in the worker:
// the probe's timers (every/after and its own), /proc look-ups (comm, procStatus) and the
// clock, so that those are synchronous and cheap for the probe.
//
// The context calls that attach something (trace, kprobe, kmsg, pressure, memoryEvents) and
// hasTraceEvent stay synchronous in the probe's view: the worker posts the request on a port
// of its own and blocks in Atomics.wait until the main thread has done it and answered (it
// never waits the other way, so there is no deadlock).
//
// Liveness, without waking anybody while nothing happens: the worker has no timer of its
// own. The main thread's checks (stalled()) read two things: the worker's event-loop idle
// time (worker.performance.eventLoopUtilization(), which grows while the worker sleeps in
// the kernel), and S_TICK, which the worker bumps each time it comes back from the probe's
// code. A worker whose idle time and tick have both stood still for stallMs is stuck in the
// probe's code (setup, a handler, a timer, a promise, the module's top level). The stall is
// counted in the main thread's checks, not by the wall clock, so a paused guest is not a
// loop; while the worker waits for the main thread in a synchronous call, it is not stuck.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { workerCode } from '../worker/code.js';
import {
  S_DONE,
  S_REPLY,
  S_TICK,
  S_WAITING,
  SLOTS,
  type FromWorker,
  type ProbeWorkerData,
  type RpcCall,
  type ToWorker,
  type WireError,
  type WorkerOut,
} from '../worker/protocol.js';
import type { Capabilities } from '../../contract/probe-api.js';

export type { WorkerOut } from '../worker/protocol.js';

/** the heap a probe's worker may hold: a probe that hoards memory runs out there, not in the agent */
const OLD_GENERATION_MB = 128;
/** the new space of a probe's worker: a probe's garbage is small and short-lived */
const YOUNG_GENERATION_MB = 4;
/** the stack of a probe's worker */
const STACK_MB = 2;

export interface ProbeWorkerOptions {
  name: string;
  code: Uint8Array;
  events: { id: number; name: string; payload: string }[];
  caps: Capabilities;
  tracefsPath: string;
  /** one Int32 slot: 1 while the agent's ring drops records (emit() returns false) */
  ringFull: SharedArrayBuffer;
  /** a synchronous context call, done on the main thread */
  onCall(op: string, args: unknown[]): unknown;
  /** records, log lines, losses and faults, in order */
  onOut(items: WorkerOut[]): void;
  /** the worker is gone without being asked to go: crashed (err) or terminated as looping */
  onDeath(why: 'looped' | 'crashed', err: Error | null): void;
  /** what the probe wrote to its console */
  onConsole?(text: string): void;
}

export class ProbeWorker {
  readonly worker: Worker;
  private readonly shared = new Int32Array(new SharedArrayBuffer(4 * SLOTS));
  private readonly rpc: MessagePort;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private batch: unknown[] = [];
  /** events handed to the worker (compared with what it has handled: the backlog) */
  private posted = 0;
  private batchQueued = false;
  /** 'loading' until the module evaluated; then 'ready'; 'dead' once it is gone */
  state: 'loading' | 'ready' | 'dead' = 'loading';
  private deathWhy: 'looped' | 'crashed' | 'stopped' | null = null;
  private lastTick = -1;
  private lastIdle = -1;
  /** checks (in periods) since the worker last moved */
  private still = 0;
  private checkMs = 0;
  private lastCheckAt = -1;
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;
  readonly threadId: number;

  constructor(private readonly o: ProbeWorkerOptions) {
    const ch = new MessageChannel();
    this.rpc = ch.port1;
    const data: ProbeWorkerData = {
      rpc: ch.port2,
      shared: this.shared.buffer,
      ring: o.ringFull,
      caps: o.caps,
      tracefsPath: o.tracefsPath,
      name: o.name,
      events: o.events,
      code: o.code,
    };
    this.worker = new Worker(workerCode('probe-host'), {
      eval: true,
      name: `probe ${o.name}`,
      workerData: data,
      transferList: [ch.port2],
      // A probe's console output must not reach the agent's stdout, which can be the channel
      // itself (--transport stdio): it goes to the log.
      stdout: true,
      stderr: true,
      // A probe that hoards memory runs out in its worker (a crash, reported), not the agent.
      resourceLimits: { maxOldGenerationSizeMb: OLD_GENERATION_MB, maxYoungGenerationSizeMb: YOUNG_GENERATION_MB, stackSizeMb: STACK_MB },
    });
    for (const stream of [this.worker.stdout, this.worker.stderr])
      stream.setEncoding('utf8').on('data', (text: string) => o.onConsole?.(text));
    this.threadId = this.worker.threadId;
    this.rpc.on('message', (m: RpcCall) => this.answer(m));
    let readyOk!: () => void;
    let readyFail!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => {
      readyOk = res;
      readyFail = rej;
    });
    this.ready.catch(() => undefined);
    this.worker.on('message', (m: FromWorker) => {
      if (m.t === 'out') o.onOut(m.items);
      else if (m.t === 'done') {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.err) p.reject(fromWire(m.err));
        else p.resolve(m.value);
      } else if (m.t === 'ready') {
        this.state = 'ready';
        readyOk();
      } else if (m.t === 'bad')
        readyFail(new VesperError(ErrorCode.PROBE_LOAD_FAILED, `probe ${o.name} does not evaluate: ${m.err.message}`));
    });
    let crash: Error | null = null;
    this.worker.on('error', (err) => {
      crash = err;
    });
    this.exited = new Promise<void>((resolve) => {
      this.worker.once('exit', () => {
        const why = this.deathWhy ?? 'crashed';
        this.deathWhy = why;
        this.state = 'dead';
        this.rpc.close();
        const err =
          why === 'looped'
            ? new VesperError(ErrorCode.PROBE_LOOPED, `probe ${o.name} was stuck in its code; its worker was terminated`)
            : why === 'crashed'
              ? new VesperError(ErrorCode.PROBE_CRASHED, `probe ${o.name} crashed: ${crash?.message ?? 'its worker exited'}`)
              : new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${o.name} was unloaded`);
        readyFail(err);
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
        if (why !== 'stopped') o.onDeath(why, why === 'crashed' ? crash : null);
        resolve();
      });
    });
  }

  get alive(): boolean {
    return this.state !== 'dead' && this.deathWhy === null;
  }

  /** Asks the worker to run start/stop for one instance; rejects when the worker dies first. */
  request(msg: { t: 'start' | 'stop'; handle: number; instance?: number; params?: unknown }): Promise<unknown> {
    if (!this.alive) return Promise.reject(new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${this.o.name}'s worker is gone`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...msg, id });
    });
  }

  /** Events handed to the worker that it has not handled yet. */
  get backlog(): number {
    return this.posted - Atomics.load(this.shared, S_DONE) + this.batch.length / 2;
  }

  /** Queues an event for one of the probe's handlers; sent once per turn of the main thread. */
  deliver(hid: number, payload: unknown): void {
    if (!this.alive) return;
    this.batch.push(hid, payload);
    if (this.batch.length >= 2048) this.flush();
    else if (!this.batchQueued) {
      this.batchQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.batchQueued = false;
    if (!this.batch.length || !this.alive) {
      this.batch = [];
      return;
    }
    const b = this.batch;
    this.batch = [];
    this.posted += b.length / 2;
    this.worker.postMessage({ t: 'ev', b } satisfies ToWorker);
  }

  private answer(m: RpcCall): void {
    let reply: { value?: unknown; err?: WireError };
    try {
      reply = { value: this.o.onCall(m.op, m.args) };
    } catch (err) {
      const e = err as VesperError;
      reply = {
        err: { code: typeof e?.code === 'string' ? e.code : undefined, message: e?.message ?? String(err), detail: e?.detail ?? '' },
      };
    }
    if (this.state === 'dead') return;
    this.rpc.postMessage(reply);
    Atomics.store(this.shared, S_REPLY, 1);
    Atomics.notify(this.shared, S_REPLY);
  }

  /**
   * One check of the main thread's watchdog: true once the worker has neither slept nor come
   * back from the probe's code for stallMs worth of checks (each check counts checkMs),
   * outside a call into the main thread.
   */
  stalled(checkMs: number, stallMs: number): boolean {
    if (!this.alive) return false;
    const tick = Atomics.load(this.shared, S_TICK);
    // Idle time (ms) the worker's event loop spent waiting; -1 once it is gone. It grows
    // while the worker sleeps in the kernel, paused guest included, and stands still while
    // the worker runs code.
    const idle = this.worker.performance.eventLoopUtilization().idle;
    // tick 0: the worker thread is still starting (no probe code has run).
    const moved = tick !== this.lastTick || idle !== this.lastIdle;
    this.lastTick = tick;
    this.lastIdle = idle;
    const now = performance.now();
    // A check that came early (the shared tick runs when the main thread is awake anyway,
    // ticker.ts) counts for its share of a period; a late one for one period at most, so that
    // a paused guest is still not a loop. Within 2 % of a period (the timers' own jitter) it
    // is one whole check.
    const part = this.lastCheckAt < 0 ? 1 : (now - this.lastCheckAt) / checkMs;
    const share = part >= 0.98 ? 1 : part;
    this.lastCheckAt = now;
    if (tick === 0 || moved || Atomics.load(this.shared, S_WAITING) === 1) {
      this.still = 0;
      return false;
    }
    this.still += share;
    this.checkMs = checkMs;
    return this.still * checkMs >= stallMs;
  }

  get stalledMs(): number {
    return Math.round(this.still * this.checkMs);
  }

  /** Ends the worker: as looping (reported) or because its probe was unloaded (not reported). */
  async kill(why: 'looped' | 'stopped'): Promise<void> {
    if (this.deathWhy === null) this.deathWhy = why;
    await this.worker.terminate();
    await this.exited;
  }
}

function fromWire(e: WireError): Error {
  if (e.code) return new VesperError(e.code, e.message, e.detail ?? '');
  const err = new Error(e.message);
  return err;
}
