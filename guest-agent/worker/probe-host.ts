// The code of a probe's worker thread (entry of its own in the bundle: scripts/build.mjs).
//
// It evaluates one probe module and runs its instances: their handlers, timers and /proc
// look-ups. Everything a probe attaches in the kernel is attached by the main thread
// (modules/runtime.ts), asked through the synchronous calls below; events come back in
// batches ('ev'), records go out in one message per turn of this thread's loop.
//
// The worker has no timer of its own: when no event comes and the probe has no timer, it
// sleeps in the kernel. Its liveness is read from outside (probe-worker.ts): the main thread
// sees its event loop's idle time grow while it waits, and S_TICK move while it works.
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { ErrorCode } from '../../proto/errors.js';
import { ProcCache, monoNow } from '../kernel/proc.js';
import type { ParamValue, ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import {
  S_DONE,
  S_REPLY,
  S_TICK,
  S_WAITING,
  type FromWorker,
  type ProbeWorkerData,
  type RpcCall,
  type ToWorker,
  type WireError,
  type WorkerOut,
} from './protocol.js';

const data = workerData as ProbeWorkerData;
const port = parentPort!;
const s = new Int32Array(data.shared);
const ringFull = new Int32Array(data.ring);
const events = new Map(data.events.map((e) => [e.name, e]));
const proc = new ProcCache(data.tracefsPath);
type Handler = (payload: unknown) => void;
const handlers: Handler[] = [];

interface Inst {
  stopped: boolean;
  timers: Set<NodeJS.Timeout>;
  ctx: ProbeContext | null;
}
const insts = new Map<number, Inst>();
let mod: ProbeModule | null = null;
let out: WorkerOut[] = [];
let flushQueued = false;

// The worker is up (Node's own start-up in a new thread can take seconds in a slow guest,
// and is not the probe's code): the main thread counts stalls from here on.
Atomics.add(s, S_TICK, 1);

function post(m: FromWorker): void {
  port.postMessage(m);
}

function flush(): void {
  flushQueued = false;
  if (!out.length) return;
  const items = out;
  out = [];
  post({ t: 'out', items });
}

function queue(item: WorkerOut): void {
  out.push(item);
  if (out.length >= 1024) flush();
  else if (!flushQueued) {
    flushQueued = true;
    queueMicrotask(flush);
  }
}

interface AgentErr extends Error {
  code?: string;
  detail?: string;
}

function wireError(err: unknown): WireError {
  const e = err as AgentErr | null;
  // Only the agent's own errors keep their code; a probe's (ENOENT, ...) is its message.
  return {
    code: e?.name === 'VesperError' && typeof e.code === 'string' ? e.code : undefined,
    message: String(e?.message ?? err),
    detail: e?.detail ?? '',
  };
}

function agentError(w: WireError): AgentErr {
  const err: AgentErr = new Error(w.message);
  err.name = 'VesperError';
  if (w.code) err.code = w.code;
  err.detail = w.detail ?? '';
  return err;
}

/** A synchronous call into the main thread: post, then block until it has answered. */
function call(op: string, args: unknown[]): unknown {
  flush(); // what the probe emitted before comes first
  Atomics.store(s, S_REPLY, 0);
  Atomics.store(s, S_WAITING, 1);
  data.rpc.postMessage({ op, args } satisfies RpcCall);
  let r: { message: { value?: unknown; err?: WireError } } | undefined;
  try {
    for (;;) {
      Atomics.wait(s, S_REPLY, 0, 1000);
      r = receiveMessageOnPort(data.rpc);
      if (r) break;
    }
  } finally {
    Atomics.store(s, S_WAITING, 0);
    Atomics.add(s, S_TICK, 1);
  }
  if (r.message.err) throw agentError(r.message.err);
  return r.message.value;
}

function stopTimers(inst: Inst): void {
  for (const t of inst.timers) clearTimeout(t);
  inst.timers.clear();
}

function fault(handle: number, inst: Inst, err: unknown): void {
  if (inst.stopped) return;
  inst.stopped = true;
  stopTimers(inst);
  const e = err as Error | null;
  queue(['fault', handle, String(e?.message ?? err), String(e?.stack ?? err)]);
  flush();
}

/** The probe's code, called so that a throw faults its instance only; back from it, the worker is alive. */
function guard<A extends unknown[]>(handle: number, inst: Inst, fn: (...a: A) => void): (...a: A) => void {
  return (...a: A) => {
    if (inst.stopped) return;
    try {
      fn(...a);
    } catch (err) {
      fault(handle, inst, err);
    }
    Atomics.add(s, S_TICK, 1);
  };
}

function context(handle: number, instance: number, params: Record<string, ParamValue>, inst: Inst): ProbeContext {
  const hid = (fn: Handler): number => {
    handlers.push(guard(handle, inst, fn));
    return handlers.length - 1;
  };
  return {
    name: data.name,
    instance,
    handle,
    params,
    capabilities: data.caps,
    log: (msg) => queue(['log', handle, String(msg)]),
    trace: (system, event, filter, fn, fields) => {
      call('trace', [handle, system, event, filter, hid(fn as Handler), fields ? [...fields] : undefined]);
    },
    hasTraceEvent: (system, event, field) => call('hasTraceEvent', [system, event, field]) as boolean,
    kprobe: (spec, filter, fn) => call('kprobe', [handle, spec, filter, hid(fn as Handler)]) as string,
    kmsg: (fn, opts) => {
      call('kmsg', [handle, hid(fn as Handler), opts?.match]);
    },
    pressure: (opts, fn) => {
      call('pressure', [handle, opts, hid(fn as Handler)]);
    },
    memoryEvents: (path, fn) => {
      call('memoryEvents', [handle, path, hid(fn as Handler)]);
    },
    every: (ms, fn) => {
      inst.timers.add(setInterval(guard(handle, inst, fn), ms));
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
      if (!e)
        throw agentError({
          code: ErrorCode.PROBE_BAD_MANIFEST,
          message: `probe ${data.name} emitted ${event}, which its manifest does not declare`,
        });
      const body = (payload as Record<string, unknown> | undefined)?.[e.payload] ?? {};
      queue(['rec', handle, e.id, e.payload, body, tsNs ?? monoNow()]);
      return Atomics.load(ringFull, 0) === 0;
    },
    lost: (count) => queue(['lost', handle, count]),
    lacks: (message) => {
      call('lacks', [handle, String(message)]);
    },
    comm: (pid) => proc.comm(pid),
    procStatus: (pid) => proc.status(pid),
    now: monoNow,
  };
}

async function start(m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
  const inst: Inst = { stopped: false, timers: new Set(), ctx: null };
  insts.set(m.handle, inst);
  inst.ctx = context(m.handle, m.instance ?? 0, (m.params ?? {}) as Record<string, ParamValue>, inst);
  try {
    await mod!.setup(inst.ctx);
  } catch (err) {
    inst.stopped = true;
    stopTimers(inst);
    insts.delete(m.handle);
    throw err;
  }
}

async function stop(m: Extract<ToWorker, { t: 'stop' }>): Promise<string> {
  const inst = insts.get(m.handle);
  if (!inst) return '';
  insts.delete(m.handle);
  inst.stopped = true;
  stopTimers(inst);
  let warn = '';
  try {
    if (typeof mod?.teardown === 'function') await mod.teardown(inst.ctx!);
  } catch (err) {
    warn = String((err as Error)?.message ?? err);
  }
  stopTimers(inst); // teardown may have made new ones
  return warn;
}

port.on('message', (m: ToWorker) => {
  if (m.t === 'ev') {
    // Back from the probe's code after each event (the guard bumps S_TICK): alive, even when
    // a backlog keeps its timers waiting; a slow handler is not a loop.
    const b = m.b;
    for (let i = 0; i < b.length; i += 2) handlers[b[i] as number]?.(b[i + 1]);
    Atomics.add(s, S_DONE, b.length / 2);
    return;
  }
  const op: Promise<unknown> = m.t === 'start' ? start(m) : m.t === 'stop' ? stop(m) : Promise.reject(new Error('unknown request'));
  op.then(
    (value) => {
      flush();
      post({ t: 'done', id: m.id, value });
    },
    (err: unknown) => {
      flush();
      post({ t: 'done', id: m.id, err: wireError(err) });
    },
  );
});

void (async () => {
  try {
    const ns = (await import('data:text/javascript;base64,' + Buffer.from(data.code).toString('base64'))) as { default?: ProbeModule };
    mod = ns.default ?? null;
    if (!mod || typeof mod.setup !== 'function') throw new Error('no default export with a setup(ctx) function');
    post({ t: 'ready' });
  } catch (err) {
    post({ t: 'bad', err: wireError(err) });
  }
})();
