// A fleet subscriber for the bus rig's benchmark: follows the bus from the start (FleetBus, as
// `vesper fleet events -f` does) until it has `expect` distinct events or `timeoutMs` passed,
// then prints one JSON line: how many it got, how many twice, when the first and last came
// (ms, this machine's clock) and the delay of each from its host's commit (hostTimeUs) as
// percentiles. Prints {"ready": true} once started and {"reading": true} once its consumer reads
// the stream (a host started after that is measured from its first event on). Runs in its own
// network namespace:  tsx bus-counter.ts '{"servers":[...],"expect":N}'
import { FleetBus } from '../../../host/fleet/bus.js';

const o = JSON.parse(process.argv[2] ?? '{}') as { servers: string[]; expect: number; timeoutMs?: number };
const bus = await FleetBus.open({ servers: o.servers, subject_prefix: 'vesper', stream: { name: 'VESPER' } }, 10_000);
const ids = new Set<string>();
let received = 0;
let firstMs = 0;
let lastMs = 0;
const delays: number[] = [];
const ac = new AbortController();
const timer = setTimeout(() => ac.abort(), o.timeoutMs ?? 120_000);
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
// The stream is made by the first host that publishes: wait for it (bounded by the timeout).
for (;;) {
  try {
    await bus.subjects();
    break;
  } catch (err) {
    if ((err as { code?: string }).code !== 'VSP_BUS_STREAM_MISSING' || ac.signal.aborted) {
      process.stderr.write(`bus-counter: ${(err as Error).message}\n`);
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
await bus.events(
  {},
  {
    follow: true,
    onNote: (note) => process.stderr.write(`bus-counter: ${note}\n`),
    onReading: () => process.stdout.write(`${JSON.stringify({ reading: true })}\n`),
  },
  (e) => {
    const now = Date.now();
    received++;
    if (!firstMs) firstMs = now;
    lastMs = now;
    ids.add(e.eventId);
    delays.push(now - e.hostTimeUs / 1000);
    if (ids.size >= o.expect) ac.abort();
  },
  ac.signal,
);
clearTimeout(timer);
delays.sort((a, b) => a - b);
const pct = (p: number): number => delays[Math.min(delays.length - 1, Math.ceil((p / 100) * delays.length) - 1)] ?? NaN;
process.stdout.write(
  `${JSON.stringify({ received, distinct: ids.size, twice: received - ids.size, firstMs, lastMs, p50: pct(50), p99: pct(99), max: delays.at(-1) ?? NaN })}\n`,
);
await bus.close();
process.exit(0);
