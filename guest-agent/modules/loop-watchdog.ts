// LoopWatchdog: what contains a probe that never returns. Probes run on the agent's one
// thread, so a probe stuck in a loop stops every other probe, the heartbeat and the channel
// with it, and no exception ever comes to unload it. A worker thread watches: the main thread
// bumps a counter every TICK_MS and marks which probe's code it is in (setup, a handler, a
// timer: the runtime's guard). When the counter has not moved for stallMs of the worker's own
// running time while the mark names a probe, that probe is written to the quarantine file and
// the agent kills itself; whatever restarts it (systemd, the guest's init, the SSH relay)
// starts an agent that refuses that module (its digest) with VSP_PROBE_QUARANTINED and tells
// the host once with a ProbeFault record, while the other probes are pushed again as after any
// agent restart. What the dead agent had not sent is reported by the run-state file.
//
// The stall is counted in the worker's checks, not by the wall clock: when the whole guest is
// paused (a starved vCPU) the worker is paused too and does not take the pause for a loop.
import { readFileSync, writeFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

const TICK_MS = 100;
const CHECK_MS = 250;

export interface QuarantineEntry {
  /** the module's digest, hex */
  digest: string;
  probe: string;
  handle: number;
  stalledMs: number;
  /** Date.now() when it was quarantined */
  at: number;
  /** a later agent has told the host (ProbeFault record) */
  told?: boolean;
}

const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const s = new Int32Array(workerData.shared);
const probes = new Map();
parentPort.on('message', (m) => (m.forget ? probes.delete(m.handle) : probes.set(m.handle, m)));
let last = -1;
let still = 0;
setInterval(() => {
  const tick = Atomics.load(s, 0);
  const handle = Atomics.load(s, 1);
  if (tick !== last || handle === 0) {
    last = tick;
    still = 0;
    return;
  }
  still++;
  if (still * workerData.checkMs < workerData.stallMs) return;
  const p = probes.get(handle) || { name: '?', digest: '' };
  const e = { digest: p.digest, probe: p.name, handle, stalledMs: still * workerData.checkMs, at: Date.now() };
  try {
    fs.appendFileSync(workerData.file, JSON.stringify(e) + '\\n', { mode: 0o600 });
  } catch {}
  process.stderr.write(JSON.stringify({ level: 60, time: Date.now(), name: 'vesper-agent', ...e, msg: 'probe stuck in its code; quarantined, agent restarting' }) + '\\n');
  process.kill(process.pid, 'SIGKILL');
}, workerData.checkMs);
`;

export class LoopWatchdog {
  private readonly shared = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly file: string,
    readonly stallMs = 3000,
  ) {
    this.worker = new Worker(WORKER, { eval: true, workerData: { shared: this.shared.buffer, file, stallMs, checkMs: CHECK_MS } });
    this.worker.unref();
    this.timer = setInterval(() => Atomics.add(this.shared, 0, 1), TICK_MS);
    this.timer.unref();
  }

  /** The main thread runs this probe's code now. */
  enter(handle: number): void {
    this.shared[1] = handle;
  }

  leave(): void {
    this.shared[1] = 0;
  }

  known(handle: number, probe: string, digest: Buffer): void {
    this.worker.postMessage({ handle, name: probe, digest: digest.toString('hex') });
  }

  forget(handle: number): void {
    this.worker.postMessage({ handle, forget: true });
  }

  stop(): Promise<number> {
    clearInterval(this.timer);
    return this.worker.terminate();
  }
}

/** The quarantine file's entries (none when it does not exist). */
export function readQuarantine(file: string): QuarantineEntry[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: QuarantineEntry[] = [];
  for (const l of text.split('\n'))
    try {
      if (l.trim()) out.push(JSON.parse(l) as QuarantineEntry);
    } catch {
      /* a line cut by the kill: nothing to refuse */
    }
  return out;
}

/** Marks every entry as told to the host. */
export function markQuarantineTold(file: string, entries: QuarantineEntry[]): void {
  writeFileSync(file, entries.map((e) => JSON.stringify({ ...e, told: true }) + '\n').join(''), { mode: 0o600 });
}
