// One fleet "host" for the bus rig and the fleet benchmark: a real EventStore (SQLite, the
// outbox) that a storm of events is appended to, and vesperd's export framework (Exporter, woken
// on each commit as vesperd wakes it) running a nats sink made from a `sinks:` entry. Runs in its
// host's network namespace (bus-rig.ts) as its own process:
//   tsx storm-host.ts '{"store":..., "host":..., "servers":[...], "vms":3, "count":1000, "rate":500, ...}'
// Prints one JSON line per second ({appended, delivered, failures, lastError}) and a last one
// with done: true once every event is appended and delivered.
// With `script`, the host stores those libvirt events instead of a storm: each a `virsh event
// --loop` line (without its time) made into an event as vesperd's libvirt plugin makes it, at
// `atMs` after the start, stamped with this host's clock (off by clockSkewMs: a host whose clock
// is wrong).
import pino from 'pino';
import { EventStore } from '../../../host/store/event-store.js';
import { Exporter } from '../../../host/export/exporter.js';
import { sinksSchema, toSinkConfig } from '../../../host/config/sinks.js';
import { buildSinks } from '../../../host/export/kinds.js';
import type { NatsSink } from '../../../host/export/nats-sink.js';
import type { VesperEvent } from '../../../host/notify/event.js';
import { parseEventLine } from '../../../host/libvirt/events.js';
import { eventOfLibvirt } from '../../../host/daemon/libvirt-plugin.js';

interface StormOptions {
  store: string;
  host: string;
  servers: string[];
  vms: number;
  /** events in all */
  count: number;
  /** events per second (0: as fast as the store takes them) */
  rate: number;
  replicas?: number;
  batchMax?: number;
  ackTimeout?: string;
  script?: Array<{ atMs: number; line: string }>;
  /** connect to the bus, print {"open": true}, and store nothing before a line on stdin */
  waitGo?: boolean;
  clockSkewMs?: number;
}

const o = JSON.parse(process.argv[2] ?? '{}') as StormOptions;
const store = EventStore.open(o.store, { sync: 'normal' });
const log = pino({ level: 'warn' }, pino.destination(2));
const exporter = new Exporter(store, log, o.host);
const specs = buildSinks(
  sinksSchema
    .parse([
      {
        name: 'bus',
        kind: 'nats',
        start: 'oldest',
        batch_max: o.batchMax ?? 1000,
        retry_max: '2s',
        servers: o.servers,
        ack_timeout: o.ackTimeout ?? '2s',
        stream: { replicas: o.replicas ?? 3 },
      },
    ])
    .map(toSinkConfig),
  { host: o.host },
);
const sink = specs[0]!.sink as NatsSink;
if (o.waitGo) {
  await sink.open();
  process.stdout.write(`${JSON.stringify({ open: true })}\n`);
  await new Promise((resolve) => process.stdin.once('data', resolve));
  process.stdin.pause();
}
await exporter.setSinks(specs);
let appended = store.stats().events;
const startMs = Date.now();

async function produce(): Promise<void> {
  while (appended < o.count) {
    const due =
      o.rate > 0 ? Math.min(o.count, Math.floor(((Date.now() - startMs) / 1000) * o.rate) + 1) : Math.min(o.count, appended + 2000);
    const batch: VesperEvent[] = [];
    for (; appended + batch.length < due;) {
      const n = appended + batch.length;
      batch.push({
        vm: `vm-${o.host}-${n % o.vms}`,
        plugin: 'storm',
        instance: 0,
        event: 'tick',
        guestTimeUs: null,
        hostTimeUs: Date.now() * 1000,
        source: null,
        payload: { n, perVm: Math.floor(n / o.vms) },
        disposition: 'notify',
      });
    }
    if (batch.length) {
      appended += store.append(batch).stored.length;
      exporter.wake();
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The scripted libvirt events, each at its time. */
async function play(script: NonNullable<StormOptions['script']>): Promise<void> {
  for (const s of script) {
    const wait = startMs + s.atMs - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const nowUs = (Date.now() + (o.clockSkewMs ?? 0)) * 1000;
    const e = eventOfLibvirt(parseEventLine(s.line, new Date(nowUs / 1000)), nowUs);
    if (!e) throw new Error(`not a libvirt event: ${s.line}`);
    appended += store.append([e]).stored.length;
    exporter.wake();
  }
}

async function delivered(): Promise<void> {
  while ((exporter.states()[0]?.cursor ?? 0) < o.count) await new Promise((r) => setTimeout(r, 20));
}

const report = (done = false): void => {
  const st = exporter.states()[0]!;
  const line = { host: o.host, appended, delivered: st.cursor, failures: st.failures, lastError: st.lastError, stats: sink.stats, done };
  process.stdout.write(`${JSON.stringify(line)}\n`);
};
const ticker = setInterval(() => report(), 1000);
if (o.script) o.count = o.script.length;
await Promise.all([o.script ? play(o.script) : produce(), delivered()]);
clearInterval(ticker);
report(true);
await exporter.setSinks([]); // stops the runner and closes the sink
store.close();
