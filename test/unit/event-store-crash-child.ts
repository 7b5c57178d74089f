// Run by event-store.test.ts in its own process, which the test SIGKILLs mid-stream, then
// starts again. Appends batches of one agent run's records from the highest seq the store
// holds, each batch resending the tail of the one before (as an agent does after a
// reconnect), and prints each committed batch's last seq: a printed seq is one the daemon
// would have acknowledged. Bounded by a batch count and a deadline.

import { EventStore } from '../../host/store/event-store.js';
import { CRASH_RUN, CRASH_VM, guestBatch } from './event-store-fixtures.js';

const RESEND = 3;

const [path, batchArg] = process.argv.slice(2);
if (path === undefined || batchArg === undefined) {
  process.stderr.write('usage: event-store-crash-child.ts <store path> <batch size>\n');
  process.exitCode = 2;
} else {
  const size = Number(batchArg);
  const store = EventStore.open(path);
  const deadline = Date.now() + 15_000;
  // resumes after what the store holds, as the daemon tells a reconnecting agent
  let next = store.highestSeq(CRASH_VM, CRASH_RUN) + 1;
  for (let b = 0; b < 1_000_000 && Date.now() < deadline; b++) {
    const from = Math.max(1, next - RESEND);
    store.append(guestBatch(CRASH_VM, CRASH_RUN, from, next + size - from));
    next += size;
    // synchronous on a pipe (Linux), so the line leaves only after the commit above
    process.stdout.write(`${next - 1}\n`);
  }
  store.close();
}
