// The quarantine file, and the guard of the agent's own thread.
//
// A probe stuck in a loop is caught by the runtime (runtime.ts, probe-worker.ts): its worker
// is terminated, the other probes never stop. Its module's digest is written here, one JSON
// line per module, beside the run-state file, so that this agent and any later one refuse
// that module (VSP_PROBE_QUARANTINED) until a different module is pushed. An entry an agent
// wrote without telling the host (told unset) is told by the next agent as a ProbeFault
// record.
//
// MainThreadWatchdog: probe code no longer runs on the main thread, but the agent's own code
// does (the channel, the ring, the tracefs readers' callbacks). If that thread is stuck, no
// probe is to blame and nothing else would notice: a worker thread watches a counter the main
// thread bumps every TICK_MS, and when it has not moved for stallMs of the worker's own
// checks, it logs why and kills the agent, so whatever supervises it (systemd, the guest's
// init, the SSH relay) starts a new one; the run-state file reports what was lost. The stall
// is counted in the worker's checks, not by the wall clock: when the whole guest is paused
// (a starved vCPU) the worker is paused too and does not take the pause for a hang.
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
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
const { workerData } = require('node:worker_threads');
const s = new Int32Array(workerData.shared);
let last = -1;
let still = 0;
setInterval(() => {
  const tick = Atomics.load(s, 0);
  if (tick !== last) {
    last = tick;
    still = 0;
    return;
  }
  still++;
  if (still * workerData.checkMs < workerData.stallMs) return;
  // fd 2 directly: a worker's process.stderr goes through the main thread, which is stuck.
  require('node:fs').writeSync(2, JSON.stringify({ level: 60, time: Date.now(), name: 'vesper-agent', stalledMs: still * workerData.checkMs, msg: 'the agent main thread is stuck; killing the agent so that it restarts' }) + '\\n');
  process.kill(process.pid, 'SIGKILL');
}, workerData.checkMs);
`;

export class MainThreadWatchdog {
  private readonly shared = new Int32Array(new SharedArrayBuffer(4));
  private readonly worker: Worker;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly stallMs = 10_000) {
    this.worker = new Worker(WORKER, { eval: true, workerData: { shared: this.shared.buffer, stallMs, checkMs: CHECK_MS } });
    this.worker.unref();
    this.timer = setInterval(() => Atomics.add(this.shared, 0, 1), TICK_MS);
    this.timer.unref();
  }

  stop(): Promise<number> {
    clearInterval(this.timer);
    return this.worker.terminate();
  }
}

/** Adds one entry to the quarantine file. */
export function appendQuarantine(file: string, e: QuarantineEntry): void {
  appendFileSync(file, JSON.stringify(e) + '\n', { mode: 0o600 });
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
