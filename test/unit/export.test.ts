// The export framework and its sinks against a real store file, a real HTTP server, a real
// TCP listener and real files; the sinks that fail are test doubles of the ExportSink contract.
import { createServer as createHttp } from 'node:http';
import { createServer as createTcp, type Socket } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { fileSchema, toConfig } from '../../host/config/schema.js';
import { DEFAULT_RUNNER_OPTIONS, Exporter, type RunnerOptions } from '../../host/export/exporter.js';
import { FileSink } from '../../host/export/file.js';
import { buildSinks } from '../../host/export/kinds.js';
import type { ExportEvent, ExportSink } from '../../host/export/sink.js';
import { formatRfc5424, SyslogSink } from '../../host/export/syslog.js';
import { WebhookSink } from '../../host/export/webhook.js';
import { EventStore } from '../../host/store/event-store.js';
import { guestEvent, T0_US } from './event-store-fixtures.js';

const log = pino({ level: 'silent' });
const FAST: RunnerOptions = { ...DEFAULT_RUNNER_OPTIONS, linger: 0, retryMin: 5, retryMax: 20, start: 'oldest', batchMax: 50 };
const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'vesper-export-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

class Collect implements ExportSink {
  readonly kind = 'test';
  got: ExportEvent[] = [];
  calls = 0;
  constructor(
    readonly name: string,
    private readonly failEvery = 0,
  ) {}
  deliver(batch: readonly ExportEvent[]): Promise<void> {
    this.calls++;
    if (this.failEvery && this.calls % this.failEvery === 0) return Promise.reject(new Error('receiver down'));
    this.got.push(...batch);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function storeWith(path: string, n: number, vms = 3, maxAgeMs?: number): EventStore {
  const store = EventStore.open(path, { sync: 'normal', ...(maxAgeMs ? { retention: { maxAgeMs } } : {}) });
  const evs = Array.from({ length: n }, (_, i) => guestEvent(`vm${i % vms}`, 'run1', Math.floor(i / vms) + 1, { vm: `vm${i % vms}` }));
  store.append(evs);
  return store;
}

describe('exporter', () => {
  it('delivers every event once per batch in id order, retries failed batches, and resumes from the saved cursor', async () => {
    const path = join(tmp(), 'events.db');
    let store = storeWith(path, 300);
    let ex = new Exporter(store, log, 'h1');
    const sink = new Collect('a', 3);
    await ex.setSinks([{ sink, options: FAST }]);
    await until('300 delivered', () => sink.got.length === 300);
    expect(sink.got.map((e) => e.id)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    expect(sink.got[0]!.eventId).toBe('h1/1');
    const st = ex.states()[0]!;
    expect(st).toMatchObject({ name: 'a', cursor: 300, backlog: 0, delivered: 300, lost: 0 });
    expect(st.failures).toBeGreaterThan(0);
    expect(st.lastError).toBe('receiver down');
    await ex.close();
    store.close();

    // a restart: the sink goes on after its cursor, new events only
    store = EventStore.open(path, { sync: 'normal' });
    store.append([guestEvent('vm0', 'run2', 1), guestEvent('vm1', 'run2', 1)]);
    ex = new Exporter(store, log, 'h1');
    const again = new Collect('a');
    await ex.setSinks([{ sink: again, options: FAST }]);
    await until('2 delivered', () => again.got.length === 2);
    expect(again.got.map((e) => e.id)).toEqual([301, 302]);
    await ex.close();
    store.close();
  });

  it('a sink whose receiver never acknowledges (unconfirmedMs) has its cursor persisted that late: a restart sends the window again', async () => {
    const path = join(tmp(), 'events.db');
    let store = storeWith(path, 100);
    let ex = new Exporter(store, log, 'h1');
    class Unacked extends Collect {
      readonly unconfirmedMs = 200;
    }
    const sink = new Unacked('s');
    await ex.setSinks([{ sink, options: FAST }]);
    await until('100 delivered', () => sink.got.length === 100);
    expect(ex.states()[0]!.cursor).toBe(100);
    await ex.close(); // as a SIGKILL would leave it: nothing delivered in the last 200 ms persisted
    store.close();
    store = EventStore.open(path, { sync: 'normal' });
    ex = new Exporter(store, log, 'h1');
    const again = new Unacked('s');
    await ex.setSinks([{ sink: again, options: FAST }]);
    await until('the unconfirmed window sent again', () => again.got.length === 100);
    expect(again.got.map((e) => e.id)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    // once a window has passed, the next delivery persists what it confirmed
    await new Promise((r) => setTimeout(r, 250));
    store.append([guestEvent('vm0', 'run2', 1)]);
    ex.wake();
    await until('the new event', () => again.got.length === 101);
    await ex.close();
    store.close();
    store = EventStore.open(path, { sync: 'normal' });
    ex = new Exporter(store, log, 'h1');
    const third = new Unacked('s');
    await ex.setSinks([{ sink: third, options: FAST }]);
    await until('only the last, unconfirmed batch again', () => third.got.length === 1);
    expect(third.got.map((e) => e.id)).toEqual([101]);
    await ex.close();
    store.close();
  });

  it('a new sink starting "now" skips what was stored before it; wake() brings new events at once', async () => {
    const store = storeWith(':memory:', 10);
    const ex = new Exporter(store, log, 'h');
    const sink = new Collect('n');
    await ex.setSinks([{ sink, options: { ...FAST, start: 'now' } }]);
    store.append([guestEvent('vm9', 'r', 1)]);
    ex.wake();
    await until('1 delivered', () => sink.got.length === 1, 500);
    expect(sink.got[0]!.vm).toBe('vm9');
    await ex.close();
  });

  it('age retention is held behind the slowest sink, and deletes once the sink has delivered', async () => {
    const store = storeWith(':memory:', 100, 3, 86_400_000);
    const ex = new Exporter(store, log, 'h');
    const slow = new Collect('slow');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const deliver = slow.deliver.bind(slow);
    slow.deliver = async (b) => {
      await gate;
      return deliver(b);
    };
    await ex.setSinks([{ sink: slow, options: FAST }]);
    const later = T0_US + 86_400_000_000 * 10; // every event is far older than a day
    expect(ex.prune(later).deleted).toBe(0);
    expect(store.stats().events).toBe(100);
    release();
    await until('100 delivered', () => slow.got.length === 100);
    expect(ex.prune(later).deleted).toBe(100);
    await ex.close();
    store.close();
  });

  it('counts events that size retention deleted before delivery as lost', async () => {
    const path = join(tmp(), 'small.db');
    const big = EventStore.open(path, { sync: 'normal', retention: { maxBytes: 64 * 1024 } });
    big.append(Array.from({ length: 2000 }, (_, i) => guestEvent('vm0', 'r', i + 1, { payload: { pad: 'x'.repeat(200) } })));
    const ex = new Exporter(big, log, 'h');
    const stuck = new Collect('s', 1);
    await ex.setSinks([{ sink: stuck, options: { ...FAST, retryMin: 10_000, retryMax: 10_000 } }]);
    const r = ex.prune();
    expect(r.deleted).toBeGreaterThan(0);
    const st = ex.states()[0]!;
    // the first batch is in memory (read, being retried): only what was not read yet counts
    expect(st.lost).toBe(r.deleted - Math.min(r.deleted, FAST.batchMax));
    await ex.close();
    big.close();
  });

  it('buildSinks makes the configured kinds from vesper.yaml', () => {
    const cfg = toConfig(
      fileSchema.parse({
        sinks: [
          { name: 'w', kind: 'webhook', url: 'http://127.0.0.1:9/x' },
          { name: 'f', kind: 'file', path: '/tmp/x.ndjson', max_size: '1MiB' },
          { name: 's', kind: 'syslog', transport: 'udp', address: '127.0.0.1:514' },
        ],
      }),
    );
    const specs = buildSinks(cfg.sinks, { host: 'h' });
    expect(specs.map((s) => [s.sink.name, s.sink.kind])).toEqual([
      ['w', 'webhook'],
      ['f', 'file'],
      ['s', 'syslog'],
    ]);
    expect(specs[1]!.options.batchMax).toBe(1000);
    expect(fileSchema.safeParse({ sinks: [{ name: 'a', kind: 'webhook', url: 'ftp://x' }] }).success).toBe(false);
    expect(fileSchema.safeParse({ sinks: [{ name: 'a', kind: 'pigeon' }] }).success).toBe(false);
    const dup = { name: 'a', kind: 'file', path: '/tmp/a' };
    expect(fileSchema.safeParse({ sinks: [dup, dup] }).success).toBe(false);
  });
});

function ev(id: number, vm = 'vm0'): ExportEvent {
  return {
    id,
    eventId: `h/${id}`,
    host: 'h',
    vm,
    plugin: 'signal',
    instance: 0,
    event: 'signal_generate',
    guestTimeUs: null,
    hostTimeUs: T0_US + id,
    agentRun: 'r',
    seq: id,
    disposition: 'notify',
    payload: { sig: 11, text: 'a "quoted" ]' },
  };
}

describe('sinks', () => {
  it('file: NDJSON, fsynced, rotated by size into FILE.1..keep, never splitting a line', async () => {
    const d = tmp();
    const path = join(d, 'out.ndjson');
    const f = new FileSink('f', { path, max_size: 4096, keep: 2 });
    for (let i = 1; i <= 60; i++) await f.deliver([ev(i)]);
    await f.close();
    const files = [`${path}.2`, `${path}.1`, path].filter((p) => existsSync(p));
    expect(files.length).toBe(3);
    expect(existsSync(`${path}.3`)).toBe(false);
    const ids = files.flatMap((p) =>
      readFileSync(p, 'utf8')
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as ExportEvent).id),
    );
    // the oldest rotated file was dropped; what is kept is contiguous and ends with the last event
    expect(ids[ids.length - 1]).toBe(60);
    expect(ids).toEqual(Array.from({ length: ids.length }, (_, i) => 61 - ids.length + i));
  });

  it('file: a line cut short by a crash is ended before the next append, so every later line is whole', async () => {
    const path = join(tmp(), 'cut.ndjson');
    writeFileSync(path, `${JSON.stringify(ev(1))}\n{"id":2,"eventId":"h/`);
    const f = new FileSink('f', { path, max_size: 1 << 20, keep: 1 });
    await f.deliver([ev(2), ev(3)]);
    await f.close();
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(() => JSON.parse(lines[1]!) as unknown).toThrow();
    expect(lines.slice(2).map((l) => (JSON.parse(l) as ExportEvent).id)).toEqual([2, 3]);
  });

  it('webhook: POSTs JSON batches; a non-2xx answer is a failure', async () => {
    const bodies: { events: ExportEvent[] }[] = [];
    let status = 200;
    const srv = createHttp((req, res) => {
      let b = '';
      req.on('data', (c: Buffer) => (b += c.toString()));
      req.on('end', () => {
        if (status === 200) bodies.push(JSON.parse(b) as { events: ExportEvent[] });
        res.writeHead(status).end('no');
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    try {
      const w = new WebhookSink('w', { url: `http://127.0.0.1:${port}/in`, headers: { 'x-k': 'v' } }, 'h');
      await w.deliver([ev(1), ev(2)], AbortSignal.timeout(2000));
      expect(bodies[0]!.events.map((e) => e.eventId)).toEqual(['h/1', 'h/2']);
      status = 503;
      await expect(w.deliver([ev(3)], AbortSignal.timeout(2000))).rejects.toThrow(/503/);
    } finally {
      srv.close();
    }
  });

  it('syslog: RFC 5424 with octet counting over TCP; what was sent before a broken connection is sent again', async () => {
    const line = formatRfc5424(ev(7), 3, 'vesper');
    expect(line).toMatch(
      /^<29>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z h vesper - signal.signal_generate \[vesper@32473 id="h\/7" vm="vm0"/,
    );
    let received = '';
    const conns: Socket[] = [];
    const srv = createTcp((s) => {
      conns.push(s);
      s.on('data', (b: Buffer) => (received += b.toString()));
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    const sink = new SyslogSink('s', { transport: 'tcp', address: `127.0.0.1:${port}`, facility: 'daemon', app_name: 'vesper' });
    try {
      await sink.deliver([ev(1), ev(2)], AbortSignal.timeout(2000));
      await until('2 frames', () => received.split('vesper@32473').length === 3);
      const first = received.slice(0, received.indexOf(' '));
      expect(Number(first)).toBe(Buffer.byteLength(formatRfc5424(ev(1), 3, 'vesper')));
      for (const c of conns) c.destroy(); // the receiver drops the connection
      await new Promise((r) => setTimeout(r, 50));
      await sink.deliver([ev(3)], AbortSignal.timeout(2000)).catch(() => sink.deliver([ev(3)], AbortSignal.timeout(2000)));
      await until('replayed', () => (received.match(/id="h\/3"/g) ?? []).length === 1 && (received.match(/id="h\/1"/g) ?? []).length === 2);
    } finally {
      await sink.close();
      srv.close();
    }
  });
});
