// The quarantine file, and the guard of the agent's own thread.
//
// A probe stuck in a loop is caught by the runtime (runtime.ts, probe-worker.ts): its worker
// is terminated, the other probes never stop. Its module's digest is written here, one JSON
// line per module, beside the run-state file, so that this agent and any later one refuse
// that module (VSP_PROBE_QUARANTINED) until a different module is pushed. An entry an agent
// wrote without telling the host (told unset) is told by the next agent as a ProbeFault
// record.
//
// MainThreadWatchdog: probe code does not run on the main thread, but the agent's own code
// does (the channel, the ring, the tracefs readers' callbacks). If that thread is stuck, no
// probe is to blame and nothing else would notice: a worker thread (../worker/main-watch.ts)
// watches a counter the main thread bumps once per check period, and when it has not moved
// for stallMs of the worker's own checks, it logs why and kills the agent, so whatever
// supervises it (systemd, the guest's init, the SSH relay) starts a new one; the run-state
// file reports what was lost. The stall is counted in the worker's checks, not by the wall
// clock: when the whole guest is paused (a starved vCPU) the worker is paused too and does
// not take the pause for a hang. One check period is a quarter of the stall (at most 2.5 s):
// an idle agent pays one wake-up of each thread per period, nothing more.
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { MainWatchData } from '../worker/main-watch.js';
import { workerCode } from '../worker/code.js';
import { onTick } from '../kernel/ticker.js';

/** the longest check period */
const MAX_CHECK_MS = 2500;

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

export class MainThreadWatchdog {
  // [0]: bumped by the main thread; [1]: 1 asks the worker to end
  private readonly shared = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  private readonly offTick: () => void;

  constructor(readonly stallMs = 10_000) {
    const checkMs = Math.max(50, Math.min(MAX_CHECK_MS, Math.floor(stallMs / 4)));
    const workerData: MainWatchData = { shared: this.shared.buffer, stallMs, checkMs };
    this.worker = new Worker(workerCode('main-watch'), {
      eval: true,
      name: 'main-thread watchdog',
      workerData,
      resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1, stackSizeMb: 1 },
    });
    this.worker.unref();
    // At least once per check period (the stall needs four checks in a row without a bump), on
    // the agent's shared 1 s tick when the period allows it: no wake-up of its own.
    this.offTick = onTick(checkMs >= 1000 ? 1000 : checkMs, () => Atomics.add(this.shared, 0, 1));
  }

  stop(): Promise<number> {
    this.offTick();
    Atomics.store(this.shared, 1, 1);
    Atomics.notify(this.shared, 1);
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
