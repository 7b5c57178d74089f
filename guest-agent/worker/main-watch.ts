// The code of the main-thread watchdog's worker (modules/loop-watchdog.ts), an entry of its
// own in the bundle (scripts/build.mjs).
//
// It has no event loop work at all: it sleeps in Atomics.wait for one check period at a time
// and looks at the counter the main thread bumps once per period. When the counter has not
// moved for stallMs worth of its own checks (so a paused guest, where this thread is paused
// too, is not a hang), it says why on fd 2 and kills the agent. Slot 1 set to 1 ends it.
import { writeSync } from 'node:fs';
import { workerData } from 'node:worker_threads';

export interface MainWatchData {
  shared: SharedArrayBuffer;
  stallMs: number;
  checkMs: number;
}

const { shared, stallMs, checkMs } = workerData as MainWatchData;
const s = new Int32Array(shared);
let last = Atomics.load(s, 0);
let still = 0;
while (Atomics.load(s, 1) === 0) {
  Atomics.wait(s, 1, 0, checkMs);
  if (Atomics.load(s, 1) !== 0) break;
  const tick = Atomics.load(s, 0);
  if (tick !== last) {
    last = tick;
    still = 0;
    continue;
  }
  still++;
  if (still * checkMs < stallMs) continue;
  // fd 2 directly: a worker's process.stderr goes through the main thread, which is stuck.
  writeSync(
    2,
    JSON.stringify({
      level: 60,
      time: Date.now(),
      name: 'vesper-agent',
      stalledMs: still * checkMs,
      msg: 'the agent main thread is stuck; killing the agent so that it restarts',
    }) + '\n',
  );
  process.kill(process.pid, 'SIGKILL');
}
