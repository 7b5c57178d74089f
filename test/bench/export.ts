// Export sinks' throughput and loss: a real store file holding N events, the framework
// (host/export/exporter.ts) and a real sink delivering them to a local receiver, timed from the
// sinks' start to the last cursor saved, sustained over the whole backlog.
// - export.webhook_events_per_s: HTTP POSTs of JSON batches to a node HTTP server in a child
//   process, which parses every batch; zero loss is checked (distinct ids received = N).
// - export.file_events_per_s: NDJSON appended and fsynced per batch, rotated at 64 MiB; every line
//   read back and counted.
// - export.outage_events_lost: the webhook receiver is SIGKILLed mid-way and started again 1 s
//   later, and the exporter is closed and opened again on the same store (a vesperd restart):
//   events stored but never received.
// The events are signal events with a JSON payload as host events have (guest records are stored
// as protobuf bytes and decoded on the way out: a comparable cost).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { DEFAULT_RUNNER_OPTIONS, Exporter } from '../../host/export/exporter.js';
import { FileSink } from '../../host/export/file.js';
import { WebhookSink } from '../../host/export/webhook.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { EventStore } from '../../host/store/event-store.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { round, type Metrics } from './stats.js';

const log = pino({ level: 'silent' });

const RECEIVER = `
import { createServer } from 'node:http';
const [port] = process.argv.slice(2);
const ids = new Set();
let posts = 0;
createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.url.startsWith('/count')) {
      const after = Number(new URL(req.url, 'http://x').searchParams.get('after') ?? 0);
      let n = 0;
      for (const id of ids) if (id > after) n++;
      return res.end(JSON.stringify({ distinct: n, posts }));
    }
    posts++;
    for (const e of JSON.parse(Buffer.concat(chunks).toString()).events) ids.add(e.id);
    res.end('ok');
  });
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function fill(path: string, n: number): EventStore {
  const store = EventStore.open(path, { sync: 'normal' });
  const t0 = Date.now() * 1000;
  for (let at = 0; at < n; at += 5000) {
    const batch: VesperEvent[] = [];
    for (let i = at; i < Math.min(n, at + 5000); i++)
      batch.push({
        vm: `vm${i % 100}`,
        plugin: 'signal',
        instance: 0,
        event: 'signal_generate',
        guestTimeUs: t0 + i,
        hostTimeUs: t0 + i,
        source: { agentRun: `run-${i % 100}`, seq: Math.floor(i / 100) + 1 },
        payload: {
          sig: 10,
          code: 0,
          sender: { pid: 4242, comm: 'storm' },
          target: { pid: 5000 + (i % 100), comm: 'sleep' },
          senderIsKernel: false,
        },
        disposition: 'notify',
      });
    store.append(batch);
  }
  return store;
}

async function startReceiver(dir: string, port: number): Promise<ChildProcess> {
  const p = spawn(process.execPath, [join(dir, 'receiver.mjs'), String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    p.stdout.on('data', (c: Buffer) => c.toString().includes('ready') && resolve());
    p.once('exit', (code) => reject(new Error(`receiver exited ${code}`)));
  });
  return p;
}

/** Distinct event ids the receiver has above `after`. */
async function received(port: number, after = 0): Promise<number> {
  const r = await fetch(`http://127.0.0.1:${port}/count?after=${after}`);
  return ((await r.json()) as { distinct: number }).distinct;
}

async function drain(ex: Exporter, last: number, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  await waitFor('the sink caught up', () => ex.states().every((s) => s.cursor >= last), timeoutMs, 2);
  return (performance.now() - t0) / 1000;
}

export async function exportBench(m: Metrics, o: { want: (p: string) => boolean; log: (s: string) => void }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-export-'));
  const children: ChildProcess[] = [];
  try {
    writeFileSync(join(dir, 'receiver.mjs'), RECEIVER);
    const N = 200_000;
    const store = fill(join(dir, 'events.db'), N);
    const last = store.lastId();
    const run = { ...DEFAULT_RUNNER_OPTIONS, start: 'oldest' as const, retryMax: 500 };

    if (o.want('export.webhook')) {
      const port = await freePort();
      children.push(await startReceiver(dir, port));
      store.sinkOp('reset', (t) => t.set('hook', 0));
      const ex = new Exporter(store, log, 'bench');
      await ex.setSinks([
        { sink: new WebhookSink('hook', { url: `http://127.0.0.1:${port}/e`, headers: {} }, 'bench'), options: { ...run, batchMax: 2000 } },
      ]);
      const s = await drain(ex, last, 120_000);
      await ex.close();
      const got = await received(port);
      m['export.webhook_events_per_s'] = got === N ? Math.round(N / s) : 0;
      m['export.webhook_events_lost'] = N - got;
      o.log(`export webhook: ${N} events in ${round(s, 2)} s, ${got} received`);
      children.pop()!.kill('SIGKILL');
    }

    if (o.want('export.file')) {
      const path = join(dir, 'out', 'events.ndjson');
      mkdirSync(join(dir, 'out'));
      store.sinkOp('reset', (t) => t.set('file', 0));
      const ex = new Exporter(store, log, 'bench');
      await ex.setSinks([{ sink: new FileSink('file', { path, max_size: 64 << 20, keep: 100 }), options: { ...run, batchMax: 5000 } }]);
      const s = await drain(ex, last, 120_000);
      await ex.close();
      const ids = new Set<number>();
      for (const f of readdirSync(join(dir, 'out')))
        for (const l of readFileSync(join(dir, 'out', f), 'utf8').split('\n')) if (l) ids.add((JSON.parse(l) as { id: number }).id);
      m['export.file_events_per_s'] = ids.size === N ? Math.round(N / s) : 0;
      m['export.file_events_lost'] = N - ids.size;
      o.log(`export file: ${N} events in ${round(s, 2)} s, ${ids.size} read back`);
    }

    if (o.want('export.outage')) {
      const port = await freePort();
      let recv = await startReceiver(dir, port);
      children.push(recv);
      store.sinkOp('reset', (t) => t.set('outage', 0));
      const sinkOf = (): WebhookSink => new WebhookSink('outage', { url: `http://127.0.0.1:${port}/e`, headers: {} }, 'bench');
      let ex = new Exporter(store, log, 'bench');
      const opts = { ...run, batchMax: 500, linger: 0 };
      await ex.setSinks([{ sink: sinkOf(), options: opts }]);
      await waitFor('a third delivered', () => (ex.states()[0]?.cursor ?? 0) >= last / 3, 60_000, 1);
      recv.kill('SIGKILL'); // the receiver dies with whatever it had
      const before = await new Promise((r) => recv.once('exit', r)).then(() => ex.states()[0]!.cursor);
      await sleep(300);
      await ex.close(); // and vesperd restarts: a new exporter from the saved cursor
      ex = new Exporter(store, log, 'bench');
      await ex.setSinks([{ sink: sinkOf(), options: opts }]);
      await sleep(700);
      // the restarted receiver knows nothing of what the dead one had: count the dead one's share
      const lostWindow = ex.states()[0]!;
      recv = await startReceiver(dir, port);
      children.push(recv);
      await drain(ex, last, 120_000);
      await ex.close();
      // every event after the cursor the dead receiver had acknowledged must be at the new one
      const after = await received(port, before);
      const lost = last - before - after;
      m['export.outage_events_lost'] = lost;
      o.log(
        `export outage: cursor ${before} at the kill (${lostWindow.failures} failures while down), ${after} at the new receiver, lost ${lost}`,
      );
    }
    store.close();
  } finally {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
