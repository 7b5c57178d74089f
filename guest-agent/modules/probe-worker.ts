// ProbeWorker: one worker thread per probe load; the probe's code runs there and nowhere else.
//
// A probe module is evaluated inside its own worker_threads Worker, and every instance of one
// load shares that worker. The kernel side stays on the agent's main thread: the tracing
// instance, kprobes, tracefs readers, kernel-log subscription, PSI and cgroup watchers are
// attached and released there (runtime.ts), and their events are handed to the worker in
// batches. So a worker that loops or dies holds nothing the main thread cannot release: its
// fds, kernel objects and readers were never its own. What stays in the worker: the probe's
// timers (every/after and its own), /proc look-ups (comm, procStatus) and the clock, so that
// those are synchronous and cheap for the probe.
//
// The context calls that attach something (trace, kprobe, kmsg, pressure, memoryEvents) and
// hasTraceEvent stay synchronous in the probe's view: the worker posts the request on a port
// of its own and blocks in Atomics.wait until the main thread has done it and answered (it
// never waits the other way, so there is no deadlock). Records the probe emits go to the main
// thread in one message per turn of the worker's event loop (queueMicrotask), in order with
// its log lines, losses and faults.
//
// Liveness: the worker bumps a shared counter every TICK_MS from a timer of its own event
// loop. A loop anywhere in the probe's code (setup, a handler, a timer, a promise, the
// module's top level) stops the counter. The main thread checks it (stalled()) and counts a
// stall only in its own checks, not by the wall clock, so a paused guest is not a loop. While
// the worker waits for the main thread in one of the synchronous calls, it says so and is not
// counted as stuck.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Capabilities } from '../../contract/probe-api.js';

const TICK_MS = 100;
/** the heap a probe's worker may hold */
const OLD_GENERATION_MB = 128;

// Shared Int32 slots of one worker.
const S_REPLY = 0; // the main thread answered a synchronous call
const S_TICK = 1; // bumped by the worker's event loop
const S_WAITING = 2; // 1 while the worker blocks on the main thread
const S_DONE = 3; // events the worker has handled

/** Items the worker sends, in the order the probe made them. */
export type WorkerOut =
  | ['rec', number, number, string, unknown, number] // handle, event id, payload key, payload, mono ns
  | ['log', number, string]
  | ['lost', number, number]
  | ['fault', number, string, string]; // handle, message, stack

export interface WireError {
  code?: string;
  message: string;
  detail?: string;
}

const SOURCE = String.raw`
'use strict';
const { workerData, parentPort, receiveMessageOnPort } = require('node:worker_threads');
const fs = require('node:fs');
const { rpc: rpcPort, shared, ring, caps, tracefsPath, name, events: eventList, code, tickMs } = workerData;
const s = new Int32Array(shared);
const ringFull = new Int32Array(ring);
const events = new Map(eventList.map((e) => [e.name, e]));
const insts = new Map();
const handlers = [];
let mod = null;
let out = [];
let flushQueued = false;

// The worker is up (Node's own start-up in a new thread can take seconds in a slow guest,
// and is not the probe's code): the main thread counts stalls from here on.
Atomics.add(s, ${S_TICK}, 1);
setInterval(() => Atomics.add(s, ${S_TICK}, 1), tickMs);

function monoNow() {
  return Number(process.hrtime.bigint());
}
function flush() {
  flushQueued = false;
  if (!out.length) return;
  const batch = out;
  out = [];
  parentPort.postMessage({ t: 'out', items: batch });
}
function queue(item) {
  out.push(item);
  if (out.length >= 1024) flush();
  else if (!flushQueued) {
    flushQueued = true;
    queueMicrotask(flush);
  }
}
function wireError(err) {
  // Only the agent's own errors keep their code; a probe's (ENOENT, ...) is its message.
  return { code: err && err.name === 'VesperError' && typeof err.code === 'string' ? err.code : undefined, message: String((err && err.message) || err), detail: (err && err.detail) || '' };
}
function agentError(e) {
  const err = new Error(e.message);
  err.name = 'VesperError';
  if (e.code) err.code = e.code;
  err.detail = e.detail || '';
  return err;
}
// A synchronous call into the main thread: post, then block until it has answered.
function call(op, args) {
  flush(); // what the probe emitted before comes first
  Atomics.store(s, ${S_REPLY}, 0);
  Atomics.store(s, ${S_WAITING}, 1);
  rpcPort.postMessage({ op, args });
  let r;
  try {
    for (;;) {
      Atomics.wait(s, ${S_REPLY}, 0, 1000);
      r = receiveMessageOnPort(rpcPort);
      if (r) break;
    }
  } finally {
    Atomics.store(s, ${S_WAITING}, 0);
    Atomics.add(s, ${S_TICK}, 1);
  }
  if (r.message.err) throw agentError(r.message.err);
  return r.message.value;
}

const comms = new Map();
function savedCmdline(pid) {
  if (!tracefsPath) return '';
  try {
    const m = new RegExp('^' + pid + ' (.*)$', 'm').exec(fs.readFileSync(tracefsPath + '/saved_cmdlines', 'utf8'));
    return m ? m[1] : '';
  } catch {
    return '';
  }
}
function comm(pid) {
  if (pid <= 0) return pid === 0 ? 'swapper' : '';
  const now = Date.now();
  const hit = comms.get(pid);
  if (hit && now - hit.at < 2000) return hit.comm;
  let c = '';
  try {
    c = fs.readFileSync('/proc/' + pid + '/comm', 'utf8').trimEnd();
  } catch {
    c = (hit && hit.comm) || savedCmdline(pid);
  }
  if (comms.size >= 4096) comms.clear();
  comms.set(pid, { comm: c, at: now });
  return c;
}
function procStatus(pid) {
  let text;
  try {
    text = fs.readFileSync('/proc/' + pid + '/status', 'utf8');
  } catch {
    return undefined;
  }
  const o = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) o[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return o;
}

function fault(handle, inst, err) {
  if (inst.stopped) return;
  inst.stopped = true;
  stopTimers(inst);
  queue(['fault', handle, String((err && err.message) || err), String((err && err.stack) || err)]);
  flush();
}
function guard(handle, inst, fn) {
  return (...a) => {
    if (inst.stopped) return;
    try {
      fn(...a);
    } catch (err) {
      fault(handle, inst, err);
    }
  };
}
function stopTimers(inst) {
  for (const t of inst.timers) clearTimeout(t);
  inst.timers.clear();
}

function context(handle, instance, params, inst) {
  const hid = (fn) => {
    handlers.push(guard(handle, inst, fn));
    return handlers.length - 1;
  };
  return {
    name,
    instance,
    handle,
    params,
    capabilities: caps,
    log: (msg) => queue(['log', handle, String(msg)]),
    trace: (system, event, filter, fn) => {
      call('trace', [handle, system, event, filter, hid(fn)]);
    },
    hasTraceEvent: (system, event, field) => call('hasTraceEvent', [system, event, field]),
    kprobe: (spec, filter, fn) => call('kprobe', [handle, spec, filter, hid(fn)]),
    kmsg: (fn) => {
      call('kmsg', [handle, hid(fn)]);
    },
    pressure: (opts, fn) => {
      call('pressure', [handle, opts, hid(fn)]);
    },
    memoryEvents: (path, fn) => {
      call('memoryEvents', [handle, path, hid(fn)]);
    },
    every: (ms, fn) => {
      const t = setInterval(guard(handle, inst, fn), ms);
      inst.timers.add(t);
    },
    after: (ms, fn) => {
      const g = guard(handle, inst, fn);
      const t = setTimeout(() => {
        inst.timers.delete(t);
        g();
      }, ms);
      inst.timers.add(t);
    },
    emit: (event, payload, tsNs) => {
      const e = events.get(event);
      if (!e) throw agentError({ code: '${ErrorCode.PROBE_BAD_MANIFEST}', message: 'probe ' + name + ' emitted ' + event + ', which its manifest does not declare' });
      const body = (payload && payload[e.payload]) || {};
      queue(['rec', handle, e.id, e.payload, body, tsNs === undefined ? monoNow() : tsNs]);
      return Atomics.load(ringFull, 0) === 0;
    },
    lost: (count) => queue(['lost', handle, count]),
    comm,
    procStatus,
    now: monoNow,
  };
}

async function start(m) {
  const inst = { stopped: false, timers: new Set(), ctx: null };
  insts.set(m.handle, inst);
  inst.ctx = context(m.handle, m.instance, m.params, inst);
  try {
    await mod.setup(inst.ctx);
  } catch (err) {
    inst.stopped = true;
    stopTimers(inst);
    insts.delete(m.handle);
    throw err;
  }
}
async function stop(m) {
  const inst = insts.get(m.handle);
  if (!inst) return;
  insts.delete(m.handle);
  inst.stopped = true;
  stopTimers(inst);
  let warn = '';
  try {
    if (typeof mod.teardown === 'function') await mod.teardown(inst.ctx);
  } catch (err) {
    warn = String((err && err.message) || err);
  }
  stopTimers(inst); // teardown may have made new ones
  return warn;
}

parentPort.on('message', (m) => {
  if (m.t === 'ev') {
    // Back from the probe's code after each event: alive, even when a backlog keeps the
    // timers waiting; a slow handler is not a loop.
    for (let i = 0; i < m.b.length; i += 2) {
      const h = handlers[m.b[i]];
      if (h) h(m.b[i + 1]);
      Atomics.add(s, ${S_TICK}, 1);
    }
    Atomics.add(s, ${S_DONE}, m.b.length / 2);
    return;
  }
  const op = m.t === 'start' ? start(m) : m.t === 'stop' ? stop(m) : Promise.reject(new Error('unknown request ' + m.t));
  op.then(
    (value) => {
      flush();
      parentPort.postMessage({ t: 'done', id: m.id, value });
    },
    (err) => {
      flush();
      parentPort.postMessage({ t: 'done', id: m.id, err: wireError(err) });
    },
  );
});

(async () => {
  try {
    const ns = await import('data:text/javascript;base64,' + Buffer.from(code).toString('base64'));
    mod = ns.default;
    if (!mod || typeof mod.setup !== 'function') throw new Error('no default export with a setup(ctx) function');
    parentPort.postMessage({ t: 'ready' });
  } catch (err) {
    parentPort.postMessage({ t: 'bad', err: wireError(err) });
  }
})();
`;

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
  private readonly shared = new Int32Array(new SharedArrayBuffer(16));
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
  private still = 0;
  private checkMs = 0;
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;
  readonly threadId: number;

  constructor(private readonly o: ProbeWorkerOptions) {
    const ch = new MessageChannel();
    this.rpc = ch.port1;
    this.worker = new Worker(SOURCE, {
      eval: true,
      name: `probe ${o.name}`,
      workerData: {
        rpc: ch.port2,
        shared: this.shared.buffer,
        ring: o.ringFull,
        caps: o.caps,
        tracefsPath: o.tracefsPath,
        name: o.name,
        events: o.events,
        code: o.code,
        tickMs: TICK_MS,
      },
      transferList: [ch.port2],
      // A probe's console output must not reach the agent's stdout, which can be the channel
      // itself (--transport stdio): it goes to the log.
      stdout: true,
      stderr: true,
      // A probe that hoards memory runs out in its worker (a crash, reported), not the agent.
      resourceLimits: { maxOldGenerationSizeMb: OLD_GENERATION_MB },
    });
    for (const stream of [this.worker.stdout, this.worker.stderr])
      stream.setEncoding('utf8').on('data', (text: string) => o.onConsole?.(text));
    this.threadId = this.worker.threadId;
    this.rpc.on('message', (m: { op: string; args: unknown[] }) => this.answer(m));
    let readyOk!: () => void;
    let readyFail!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => {
      readyOk = res;
      readyFail = rej;
    });
    this.ready.catch(() => undefined);
    this.worker.on('message', (m: { t: string; id?: number; items?: WorkerOut[]; value?: unknown; err?: WireError }) => {
      if (m.t === 'out') o.onOut(m.items!);
      else if (m.t === 'done') {
        const p = this.pending.get(m.id!);
        if (!p) return;
        this.pending.delete(m.id!);
        if (m.err) p.reject(fromWire(m.err));
        else p.resolve(m.value);
      } else if (m.t === 'ready') {
        this.state = 'ready';
        readyOk();
      } else if (m.t === 'bad')
        readyFail(new VesperError(ErrorCode.PROBE_LOAD_FAILED, `probe ${o.name} does not evaluate: ${m.err!.message}`));
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
    this.worker.postMessage({ t: 'ev', b });
  }

  private answer(m: { op: string; args: unknown[] }): void {
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
   * One check of the main thread's watchdog: true once the worker's event loop has not
   * turned for stallMs worth of checks (each check counts checkMs) outside a call into the
   * main thread.
   */
  stalled(checkMs: number, stallMs: number): boolean {
    if (!this.alive) return false;
    const tick = Atomics.load(this.shared, S_TICK);
    // tick 0: the worker thread is still starting (no probe code has run).
    if (tick === 0 || tick !== this.lastTick || Atomics.load(this.shared, S_WAITING) === 1) {
      this.lastTick = tick;
      this.still = 0;
      return false;
    }
    this.still++;
    this.checkMs = checkMs;
    return this.still * checkMs >= stallMs;
  }

  get stalledMs(): number {
    return this.still * this.checkMs;
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
