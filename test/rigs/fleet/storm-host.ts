// One fleet "host" for the bus rig and the fleet benchmark: a real EventStore (SQLite, the
// outbox) that a storm of events is appended to, and the nats sink delivering what is stored
// after its cursor, batch by batch, retrying a failed batch with backoff, the cursor kept in the
// store. Runs in its host's network namespace (bus-rig.ts) as its own process:
//   tsx storm-host.ts '{"store":..., "host":..., "servers":[...], "vms":3, "count":1000, "rate":500, ...}'
// Prints one JSON line per second ({appended, delivered, failures, lastError}) and a last one
// with done: true once every event is appended and delivered.
//
// The outbox loop here stands in for the export framework's runner (host/export/exporter.ts,
// built alongside): same contract (ExportSink.deliver; cursor moved only after it resolves).
import { EventStore } from '../../../host/store/event-store.js';
import { NatsSink } from '../../../host/export/nats-sink.js';
import { parseNatsParams } from '../../../host/export/nats-config.js';
import type { ExportEvent } from '../../../host/export/sink.js';
import type { VesperEvent } from '../../../host/notify/event.js';

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
}

const o = JSON.parse(process.argv[2] ?? '{}') as StormOptions;
const store = EventStore.open(o.store, { sync: 'normal' });
const sink = new NatsSink(
  'bus',
  parseNatsParams({ servers: o.servers, ack_timeout: o.ackTimeout ?? '2s', stream: { replicas: o.replicas ?? 3 } }),
  o.host,
);
const CURSOR = 'rig.bus.cursor';
let cursor = Number(store.getMeta(CURSOR) ?? 0);
let appended = store.stats().events;
let delivered = 0;
let failures = 0;
let lastError: string | null = null;
const startMs = Date.now();

function toExport(e: VesperEvent): ExportEvent {
  return {
    id: e.id!,
    eventId: `${o.host}/${e.id}`,
    host: o.host,
    vm: e.vm,
    plugin: e.plugin,
    instance: e.instance,
    event: e.event,
    guestTimeUs: e.guestTimeUs,
    hostTimeUs: e.hostTimeUs,
    agentRun: e.source?.agentRun ?? null,
    seq: e.source?.seq ?? null,
    disposition: e.disposition ?? null,
    payload: e.payload,
  };
}

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
    if (batch.length) appended += store.append(batch).stored.length;
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function outbox(): Promise<void> {
  let backoff = 200;
  while (cursor < o.count) {
    const rows = store.query({ afterId: cursor, limit: o.batchMax ?? 1000, includeDiscarded: true });
    if (!rows.length) {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    try {
      await sink.deliver(rows.map(toExport), AbortSignal.timeout(10_000));
      cursor = rows[rows.length - 1]!.id!;
      store.setMeta(CURSOR, String(cursor));
      delivered += rows.length;
      backoff = 200;
    } catch (err) {
      failures++;
      lastError = (err as Error).message;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 2000);
    }
  }
}

const report = (done = false): void =>
  void process.stdout.write(
    `${JSON.stringify({ host: o.host, appended, delivered, cursor, failures, lastError, stats: sink.stats, done })}\n`,
  );
const ticker = setInterval(() => report(), 1000);
await Promise.all([produce(), outbox()]);
clearInterval(ticker);
report(true);
await sink.close();
store.close();
