import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VesperEvent } from '../../host/notify/event.js';
import { EventStore, SCHEMA_VERSION, type EventStoreOptions } from '../../host/store/event-store.js';
import { ErrorCode } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';
import { CRASH_RUN, CRASH_VM, guestBatch, guestEvent, hostEvent, T0_US } from './event-store-fixtures.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, '..', '..');
const CRASH_CHILD = join(HERE, 'event-store-crash-child.ts');

let dir: string;
let opened: EventStore[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-store-'));
  opened = [];
});

afterEach(() => {
  for (const s of opened) s.close();
  rmSync(dir, { recursive: true, force: true });
});

function open(name = 'events.db', opts?: EventStoreOptions): EventStore {
  const s = EventStore.open(join(dir, name), opts);
  opened.push(s);
  return s;
}

function ids(events: VesperEvent[]): number[] {
  return events.map((e) => e.id as number);
}

describe('EventStore append and query', () => {
  it('round-trips events with their payload, in ascending ids set on the appended objects', () => {
    const s = open();
    const batch = [
      guestEvent('vm-a', 'run-1', 1),
      guestEvent('vm-a', 'run-1', 2, { payload: { nested: { list: [1, 'two', null, { three: 3.5 }] }, text: 'ünïcødé ✓', empty: {} } }),
      hostEvent({ hostTimeUs: T0_US + 5 }),
      guestEvent('vm-b', 'run-9', 1, { disposition: 'action', instance: 3 }),
    ];
    const { stored, duplicates } = s.append(batch);
    expect(duplicates).toBe(0);
    expect(stored).toEqual(batch);
    const got = ids(stored);
    expect(got.every((id) => Number.isInteger(id) && id > 0)).toBe(true);
    expect([...got].sort((a, b) => a - b)).toEqual(got);
    expect(new Set(got).size).toBe(4);
    expect(batch[0]?.id).toBe(got[0]);

    expect(s.query()).toEqual(batch);
    const second = s.append([guestEvent('vm-a', 'run-1', 3)]);
    expect(second.stored[0]?.id).toBeGreaterThan(got[3] as number);
  });

  it('filters by vm, plugin, event, host time and afterId', () => {
    const s = open();
    const { stored } = s.append([
      guestEvent('vm-a', 'r', 1), // T0 + 1000
      guestEvent('vm-a', 'r', 2, { plugin: 'oom', event: 'oom_kill' }), // T0 + 2000
      guestEvent('vm-b', 'r', 3), // T0 + 3000
      hostEvent({ vm: 'vm-b', hostTimeUs: T0_US + 4000 }),
      hostEvent({ vm: '', plugin: 'channel', event: 'host_up', hostTimeUs: T0_US + 5000 }),
    ]);
    const [e1, e2, e3, e4, e5] = ids(stored);
    expect(ids(s.query({ vm: 'vm-a' }))).toEqual([e1, e2]);
    expect(ids(s.query({ vm: '' }))).toEqual([e5]);
    expect(ids(s.query({ plugin: 'signal' }))).toEqual([e1, e3]);
    expect(ids(s.query({ event: 'lifecycle' }))).toEqual([e4]);
    expect(ids(s.query({ vm: 'vm-b', plugin: 'signal' }))).toEqual([e3]);
    expect(ids(s.query({ sinceUs: T0_US + 2000, untilUs: T0_US + 4000 }))).toEqual([e2, e3]);
    expect(ids(s.query({ sinceUs: T0_US + 4001 }))).toEqual([e5]);
    expect(ids(s.query({ afterId: e3 }))).toEqual([e4, e5]);
    expect(ids(s.query({ vm: 'vm-b', afterId: e3 }))).toEqual([e4]);
    expect(s.query({ vm: 'nope' })).toEqual([]);
  });

  it('leaves discarded events out unless asked for them', () => {
    const s = open();
    const { stored } = s.append([
      guestEvent('vm-a', 'r', 1),
      guestEvent('vm-a', 'r', 2, { disposition: 'discard' }),
      guestEvent('vm-a', 'r', 3, { disposition: 'action' }),
    ]);
    const [e1, e2, e3] = ids(stored);
    expect(ids(s.query())).toEqual([e1, e3]);
    expect(ids(s.query({ includeDiscarded: true }))).toEqual([e1, e2, e3]);
    expect(s.query({ includeDiscarded: true })[1]?.disposition).toBe('discard');
  });

  it('applies limit and order, with a default limit of 1000', () => {
    const s = open();
    const all = ids(s.append(guestBatch('vm-a', 'r', 1, 1001)).stored);
    expect(ids(s.query({ limit: 10 }))).toEqual(all.slice(0, 10));
    expect(ids(s.query({ limit: 3, order: 'desc' }))).toEqual(all.slice(-3).reverse());
    expect(ids(s.query({ limit: 2, order: 'desc', afterId: all[0] }))).toEqual(all.slice(-2).reverse());
    expect(s.query()).toHaveLength(1000);
    expect(s.query({ limit: 0 })).toEqual([]);
    expect(s.query({ limit: 1e12 })).toHaveLength(1001);
  });

  it('stores bigint payload values as strings', () => {
    const s = open();
    s.append([guestEvent('vm-a', 'r', 1, { payload: { big: 2n ** 70n, list: [1n] } })]);
    expect(s.query()[0]?.payload).toEqual({ big: '1180591620717411303424', list: ['1'] });
  });

  it('commits a batch whole or not at all', () => {
    const s = open();
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const batch = [guestEvent('vm-a', 'r', 1), guestEvent('vm-a', 'r', 2, { payload: circular }), guestEvent('vm-a', 'r', 3)];
    const err = caught(() => s.append(batch));
    expect(err.code).toBe(ErrorCode.STORE_FAILED);
    expect(err.message).toContain(join(dir, 'events.db'));
    expect(s.query()).toEqual([]);
    expect(batch[0]?.id).toBeUndefined();
    // the store is still usable, and the failed batch's first record is not a "duplicate"
    expect(s.append([guestEvent('vm-a', 'r', 1)]).stored).toHaveLength(1);
  });
});

describe('EventStore duplicates', () => {
  it('stores a record once when it comes twice in one call or across calls', () => {
    const s = open();
    const first = s.append([guestEvent('vm-a', 'r', 1), guestEvent('vm-a', 'r', 2), guestEvent('vm-a', 'r', 1)]);
    expect(first.stored.map((e) => e.source?.seq)).toEqual([1, 2]);
    expect(first.duplicates).toBe(1);
    const again = s.append([guestEvent('vm-a', 'r', 2), guestEvent('vm-a', 'r', 3)]);
    expect(again.stored.map((e) => e.source?.seq)).toEqual([3]);
    expect(again.duplicates).toBe(1);
    expect(s.query().map((e) => e.source?.seq)).toEqual([1, 2, 3]);
  });

  it('does not take another agent run or VM for a duplicate, and never deduplicates host events', () => {
    const s = open();
    s.append([guestEvent('vm-a', 'r', 1)]);
    const other = s.append([guestEvent('vm-a', 'r2', 1), guestEvent('vm-b', 'r', 1)]);
    expect(other).toMatchObject({ duplicates: 0 });
    expect(other.stored).toHaveLength(2);
    const host = s.append([hostEvent(), hostEvent()]);
    expect(host.duplicates).toBe(0);
    expect(s.append([hostEvent()]).stored).toHaveLength(1);
    expect(s.query({ plugin: 'libvirt' })).toHaveLength(3);
  });
});

describe('EventStore persistence and sequence numbers', () => {
  it('keeps events, ids and remembered state across close and open', () => {
    const s = open();
    const { stored } = s.append([...guestBatch('vm-a', 'r', 1, 5), hostEvent()]);
    s.setMeta('hostId', 'h-1');
    s.saveAttachment('vm-a', 'signal', { instances: 2, params: { sigs: '9,11' }, attachedAtMs: 1234 });
    s.close();

    const again = open();
    expect(again.query()).toEqual(stored);
    expect(again.getMeta('hostId')).toBe('h-1');
    expect(again.listAttachments()).toEqual([{ vm: 'vm-a', probe: 'signal', instances: 2, params: { sigs: '9,11' }, attachedAtMs: 1234 }]);
    expect(again.append([guestEvent('vm-a', 'r', 5)]).duplicates).toBe(1);
    // ids keep growing across the reopen (a refused duplicate may use one up: ids have gaps)
    const next = again.append([guestEvent('vm-a', 'r', 6)]).stored[0];
    expect(next?.id).toBeGreaterThan(stored.at(-1)?.id as number);
  });

  it('reports the highest seq and the seq counts per VM and agent run', () => {
    const s = open();
    expect(s.highestSeq('vm-a', 'r')).toBe(0);
    expect(s.countSeqs('vm-a', 'r')).toEqual({ count: 0, distinct: 0, min: 0, max: 0 });
    s.append([...guestBatch('vm-a', 'r', 3, 4), guestEvent('vm-a', 'r', 10), guestEvent('vm-a', 'r', 4)]);
    s.append([guestEvent('vm-a', 'r2', 50), guestEvent('vm-b', 'r', 99), hostEvent({ vm: 'vm-a' })]);
    expect(s.highestSeq('vm-a', 'r')).toBe(10);
    expect(s.countSeqs('vm-a', 'r')).toEqual({ count: 5, distinct: 5, min: 3, max: 10 });
    expect(s.highestSeq('vm-a', 'r2')).toBe(50);
    expect(s.highestSeq('vm-b', 'r')).toBe(99);
  });

  it('still knows what an agent run sent after retention deleted its rows', () => {
    const s = open('events.db', { retention: { maxAgeMs: 1000 } });
    s.append(guestBatch('vm-a', 'r', 1, 7));
    expect(s.prune(T0_US + 1e9).deleted).toBe(7);
    expect(s.countSeqs('vm-a', 'r').count).toBe(0);
    // A reconnecting agent is told 7, so it does not send the pruned records again.
    expect(s.highestSeq('vm-a', 'r')).toBe(7);
    expect(s.highestSeq('vm-a', 'other')).toBe(0);
  });

  it('never hands out an id twice, even after every event was pruned', () => {
    const s = open('events.db', { retention: { maxAgeMs: 1000 } });
    const before = ids(s.append(guestBatch('vm-a', 'r', 1, 3)).stored);
    expect(s.prune(T0_US + 1e9).deleted).toBe(3);
    expect(s.stats().events).toBe(0);
    const after = s.append([hostEvent()]).stored[0]?.id as number;
    expect(after).toBeGreaterThan(Math.max(...before));
  });

  it('creates a WAL file with incremental auto-vacuum and the current schema version, in a new 0750 directory', () => {
    const path = join(dir, 'state', 'vesper', 'events.db');
    const s = EventStore.open(path);
    s.append([hostEvent()]);
    s.close();
    expect(statSync(dirname(path)).mode & 0o777).toBe(0o750);
    const raw = new Database(path, { readonly: true });
    try {
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(raw.pragma('auto_vacuum', { simple: true })).toBe(2); // INCREMENTAL
      expect(raw.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      raw.close();
    }
  });

  it('reports stats for the store and per VM', () => {
    const s = open();
    expect(s.stats()).toMatchObject({ events: 0, oldestUs: null, newestUs: null });
    s.append([guestEvent('vm-a', 'r', 2), guestEvent('vm-a', 'r', 7), hostEvent({ hostTimeUs: T0_US + 5000 })]);
    const st = s.stats();
    expect(st).toMatchObject({ events: 3, oldestUs: T0_US + 2000, newestUs: T0_US + 7000 });
    expect(st.bytes).toBeGreaterThan(0);
    s.append([guestEvent('vm-b', 'r', 1, { disposition: 'discard', hostTimeUs: T0_US + 8000 })]);
    expect(s.vmStats('vm-a')).toEqual({ events: 3, oldestUs: T0_US + 2000, newestUs: T0_US + 7000 });
    expect(s.vmStats('vm-b')).toEqual({ events: 1, oldestUs: T0_US + 8000, newestUs: T0_US + 8000 });
    expect(s.vmStats('nope')).toEqual({ events: 0, oldestUs: null, newestUs: null });
  });
});

describe('EventStore refusals', () => {
  it('refuses a file written by a newer schema version', () => {
    const path = join(dir, 'newer.db');
    const raw = new Database(path);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    const err = caught(() => EventStore.open(path));
    expect(err.code).toBe(ErrorCode.STORE_FAILED);
    expect(err.message).toContain(path);
    expect(err.message).toContain(`schema version ${SCHEMA_VERSION + 1} is newer`);
    const after = new Database(path, { readonly: true });
    try {
      // refused before anything changed: not even switched to WAL
      expect(after.pragma('journal_mode', { simple: true })).toBe('delete');
    } finally {
      after.close();
    }
  });

  it('fails with VSP_STORE_FAILED when the directory cannot be created', () => {
    writeFileSync(join(dir, 'afile'), 'not a directory');
    const path = join(dir, 'afile', 'x.db');
    const err = caught(() => EventStore.open(path));
    expect(err.code).toBe(ErrorCode.STORE_FAILED);
    expect(err.message).toContain(path);
  });

  it('fails with VSP_STORE_FAILED on a file that is not a database', () => {
    const path = join(dir, 'garbage.db');
    writeFileSync(path, Buffer.alloc(8192, 0x5a));
    const err = caught(() => EventStore.open(path));
    expect(err.code).toBe(ErrorCode.STORE_FAILED);
    expect(err.message).toContain(path);
  });

  it('rejects invalid options, and any use after close', () => {
    expect(caught(() => EventStore.open(join(dir, 'a.db'), { sync: 'off' as 'full' })).code).toBe(ErrorCode.CONFIG_INVALID);
    expect(caught(() => EventStore.open(join(dir, 'a.db'), { retention: { maxBytes: -1 } })).code).toBe(ErrorCode.CONFIG_INVALID);
    const s = EventStore.open(join(dir, 'b.db'));
    s.close();
    s.close();
    expect(caught(() => s.append([hostEvent()])).code).toBe(ErrorCode.STORE_FAILED);
    expect(caught(() => s.query()).code).toBe(ErrorCode.STORE_FAILED);
  });
});

describe('EventStore retention', () => {
  it('deletes events older than maxAgeMs and keeps the rest', () => {
    const s = open('events.db', { retention: { maxAgeMs: 4_500 } });
    const nowUs = T0_US + 10_000_000;
    // host times now - 9 s, now - 8 s, ... now - 0 s
    s.append(Array.from({ length: 10 }, (_, k) => guestEvent('vm-a', 'r', k + 1, { hostTimeUs: nowUs - (9 - k) * 1_000_000 })));
    expect(s.prune(nowUs)).toEqual({ deleted: 5, complete: true });
    expect(s.query().map((e) => e.source?.seq)).toEqual([6, 7, 8, 9, 10]);
    expect(s.prune(nowUs).deleted).toBe(0);
  });

  it('deletes the oldest events until the database is under maxBytes, and the file shrinks', () => {
    const maxBytes = 512 * 1024;
    const path = join(dir, 'events.db');
    const s = open('events.db', { retention: { maxBytes } });
    for (let b = 0; b < 8; b++) s.append(guestBatch('vm-a', 'r', b * 500 + 1, 500, 400));
    const before = s.stats();
    expect(before.bytes).toBeGreaterThan(3 * maxBytes);

    const { deleted, complete } = s.prune();
    const after = s.stats();
    expect(complete).toBe(true);
    expect(after.bytes).toBeLessThanOrEqual(maxBytes);
    expect(after.bytes).toBeGreaterThan(maxBytes / 2); // deleted the oldest in chunks, not everything
    expect(deleted).toBe(before.events - after.events);
    // the survivors are exactly the newest
    expect(s.countSeqs('vm-a', 'r')).toEqual({ count: after.events, distinct: after.events, min: 4000 - after.events + 1, max: 4000 });
    expect(statSync(path).size).toBeLessThanOrEqual(maxBytes);
  });

  it('stops at its per-call budget and says so', () => {
    const s = open('events.db', { retention: { maxAgeMs: 1, pruneBudgetRows: 150 } });
    s.append(guestBatch('vm-a', 'r', 1, 1000));
    const nowUs = T0_US + 1e9;
    const calls: { deleted: number; complete: boolean }[] = [];
    for (let i = 0; i < 20 && calls.at(-1)?.complete !== true; i++) calls.push(s.prune(nowUs));
    expect(calls[0]).toEqual({ deleted: 150, complete: false });
    expect(calls.at(-1)).toEqual({ deleted: 100, complete: true });
    expect(calls).toHaveLength(7);
    expect(s.stats().events).toBe(0);
  });

  it('deletes nothing without a retention', () => {
    const s = open();
    s.append(guestBatch('vm-a', 'r', 1, 10));
    expect(s.prune(T0_US + 1e12)).toEqual({ deleted: 0, complete: true });
    expect(s.stats().events).toBe(10);
  });
});

describe('EventStore remembered state', () => {
  it('saves, replaces, lists and removes attachments', () => {
    const s = open();
    s.saveAttachment('vm-b', 'oom', { instances: 1, params: {}, attachedAtMs: 10 });
    s.saveAttachment('vm-a', 'signal', { instances: 1, params: { sigs: '11' }, attachedAtMs: 20 });
    s.saveAttachment('vm-a', 'signal', { instances: 4, params: { sigs: '6,11' }, attachedAtMs: 30 });
    s.saveAttachment('vm-a', 'exec', { instances: 1, params: { comm: 'sshd' } });
    expect(s.listAttachments('vm-a').map((a) => [a.probe, a.instances, a.params])).toEqual([
      ['exec', 1, { comm: 'sshd' }],
      ['signal', 4, { sigs: '6,11' }],
    ]);
    expect(s.listAttachments('vm-a')[0]?.attachedAtMs).toBeGreaterThan(1_600_000_000_000);
    expect(s.listAttachments().map((a) => `${a.vm}/${a.probe}`)).toEqual(['vm-a/exec', 'vm-a/signal', 'vm-b/oom']);
    expect(s.removeAttachment('vm-a', 'signal')).toBe(true);
    expect(s.removeAttachment('vm-a', 'signal')).toBe(false);
    expect(s.listAttachments().map((a) => `${a.vm}/${a.probe}`)).toEqual(['vm-a/exec', 'vm-b/oom']);
  });

  it('saves, replaces in place, deletes and clears filter rules', () => {
    const s = open();
    const any = { vm: '*', plugin: 'signal', instance: '*', event: '*' };
    const one = { vm: 'vm-a', plugin: 'oom', instance: '0', event: 'oom_kill' };
    s.saveFilter({ ...any, decision: { disposition: 'discard' } });
    s.saveFilter({ ...one, decision: { disposition: 'action', actions: ['restart'] } });
    s.saveFilter({ ...any, decision: { disposition: 'notify', where: 'sig == 11' } });
    expect(s.listFilters()).toEqual([
      { ...any, decision: { disposition: 'notify', where: 'sig == 11' } },
      { ...one, decision: { disposition: 'action', actions: ['restart'] } },
    ]);
    expect(s.deleteFilter(any)).toBe(true);
    expect(s.deleteFilter(any)).toBe(false);
    expect(s.listFilters().map((f) => f.plugin)).toEqual(['oom']);
    s.saveFilter({ ...any, decision: 'discard' });
    expect(s.clearFilters()).toBe(2);
    expect(s.listFilters()).toEqual([]);
  });

  it('reads and writes meta values', () => {
    const s = open();
    expect(s.getMeta('hostId')).toBeUndefined();
    s.setMeta('hostId', 'h-1');
    s.setMeta('hostId', 'h-2');
    s.setMeta('other', '');
    expect(s.getMeta('hostId')).toBe('h-2');
    expect(s.getMeta('other')).toBe('');
  });
});

describe('EventStore crash durability', () => {
  /** Runs the crash child until it has printed `killAfter` lines, SIGKILLs it, answers what it printed. */
  async function runAndKill(path: string, batchSize: number, killAfter: number): Promise<number[]> {
    const child = spawn(process.execPath, ['--import', 'tsx', CRASH_CHILD, path, String(batchSize)], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const printed: number[] = [];
    let pending = '';
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) printed.push(Number(line));
      if (printed.length >= killAfter && !child.killed) child.kill('SIGKILL');
    });
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`crash child still running after 10 s; stderr: ${stderr}`));
      }, 10_000);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal });
      });
    });
    expect(exit.signal, `the child must die by our SIGKILL, mid-stream; stderr: ${stderr}`).toBe('SIGKILL');
    expect(printed.length).toBeGreaterThanOrEqual(killAfter);
    return printed;
  }

  it('keeps every acknowledged batch exactly once when the writer is SIGKILLed mid-stream, again and again', async () => {
    const path = join(dir, 'crash.db');
    const batchSize = 50;
    let held = 0;
    for (const killAfter of [10, 25, 40]) {
      const printed = await runAndKill(path, batchSize, killAfter);
      // the child went on from what the store held, one whole batch per line
      expect(printed).toEqual(printed.map((_, i) => held + (i + 1) * batchSize));
      const lastAcked = printed.at(-1) as number;

      const s = EventStore.open(path);
      try {
        const seqs = s.countSeqs(CRASH_VM, CRASH_RUN);
        // every seq once, none missing from 1 up: each batch (resent tail included) landed whole
        expect(seqs.count).toBe(seqs.distinct);
        expect(seqs.min).toBe(1);
        expect(seqs.max).toBe(seqs.count);
        // everything acknowledged is there; at most the one batch committed before it could be printed is extra
        expect(seqs.max).toBeGreaterThanOrEqual(lastAcked);
        expect(seqs.max).toBeLessThanOrEqual(lastAcked + batchSize);
        held = s.highestSeq(CRASH_VM, CRASH_RUN);
        expect(held).toBe(seqs.max);
      } finally {
        s.close();
      }
    }
  });
});

describe('EventStore ingest throughput', () => {
  it('appends 1000-record batches fast enough for the ingest path', () => {
    const s = open();
    const batches = Array.from({ length: 25 }, (_, b) =>
      guestBatch('vm-a', 'boot-0f3c2a1e-5b7d-4c1a-9e2f-1234567890ab', b * 1000 + 1, 1000),
    );
    for (const b of batches.slice(0, 5)) s.append(b); // warm-up: JIT and the first pages
    const timesMs: number[] = [];
    for (const b of batches.slice(5)) {
      const t0 = performance.now();
      s.append(b);
      timesMs.push(performance.now() - t0);
    }
    const sorted = [...timesMs].sort((a, b) => a - b);
    const total = timesMs.reduce((a, b) => a + b, 0);
    const median = sorted[Math.floor(sorted.length / 2)] as number;
    const rowsPerS = (ms: number): number => Math.round((1000 / ms) * 1000);
    console.log(
      `event store append (sync full, 1000 rows/transaction): median ${rowsPerS(median)} rows/s, ` +
        `overall ${Math.round((timesMs.length * 1000 * 1000) / total)} rows/s, best ${rowsPerS(sorted[0] as number)} rows/s`,
    );
    expect(s.countSeqs('vm-a', 'boot-0f3c2a1e-5b7d-4c1a-9e2f-1234567890ab').count).toBe(25_000);
    // A floor far below the target, so a loaded machine does not fail it, but one commit (and
    // fsync) per row would.
    expect(rowsPerS(median)).toBeGreaterThan(25_000);
  });
});
