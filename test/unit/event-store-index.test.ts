// The store's by-VM index (filled in passes, with a tail it has not reached yet), its
// in-memory duplicate check, host times that never go backwards, guest records kept as their
// bytes, and the step from schema version 2.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VesperEvent } from '../../host/notify/event.js';
import { RecordEvent } from '../../host/notify/record-event.js';
import { EventStore } from '../../host/store/event-store.js';
import { MIGRATIONS } from '../../host/store/schema.js';
import { VM_BUCKET_SHIFT } from '../../host/store/vm-index.js';
import { v1 } from '../../proto/codec.js';
import { guestEvent, hostEvent, T0_US } from './event-store-fixtures.js';

let dir: string;
let opened: EventStore[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-store-index-'));
  opened = [];
});

afterEach(() => {
  for (const s of opened) s.close();
  rmSync(dir, { recursive: true, force: true });
});

// Index passes by row count only, so that which rows are still in the tail does not depend on
// how fast this machine runs the test.
function open(name = 'events.db'): EventStore {
  const s = EventStore.open(join(dir, name), { indexEveryMs: 3_600_000 });
  opened.push(s);
  return s;
}

function rawCount(name: string, sql: string): number {
  const db = new Database(join(dir, name), { readonly: true });
  try {
    return db.prepare(sql).pluck().get() as number;
  } finally {
    db.close();
  }
}

/** Three VMs interleaved, one event each in turn, `perVm` each, in batches of 1000. */
function interleaved(s: EventStore, perVm: number): Map<string, number[]> {
  const byVm = new Map<string, number[]>([
    ['vm-a', []],
    ['vm-b', []],
    ['vm-c', []],
  ]);
  let batch: VesperEvent[] = [];
  let t = T0_US;
  const flush = (): void => {
    for (const e of s.append(batch).stored) byVm.get(e.vm)?.push(e.id as number);
    batch = [];
  };
  for (let seq = 1; seq <= perVm; seq++) {
    for (const vm of byVm.keys()) {
      // vm-c's events are mostly discarded: filters apply inside the index's buckets too
      batch.push(guestEvent(vm, 'run', seq, { hostTimeUs: (t += 10), disposition: vm === 'vm-c' && seq % 4 !== 0 ? 'discard' : 'notify' }));
    }
    if (batch.length >= 1000) flush();
  }
  flush();
  return byVm;
}

describe('EventStore by-VM reads', () => {
  const BUCKET = 2 ** VM_BUCKET_SHIFT;

  it(
    'finds one VM among many across buckets and the unindexed tail, in both orders, with cursors and time ranges',
    { timeout: 30_000 },
    () => {
      const s = open();
      // 3 x 45,000 events: more than two buckets of ids
      const PER_VM = 45_000;
      const byVm = interleaved(s, PER_VM);
      const a = byVm.get('vm-a') as number[];
      expect(a.at(-1)).toBeGreaterThan(2 * BUCKET);
      const ids = (q: Parameters<EventStore['query']>[0]): number[] => s.query(q).map((e) => e.id as number);

      expect(ids({ vm: 'vm-a', limit: 100_000 })).toEqual(a);
      expect(ids({ vm: 'vm-a', limit: 5, order: 'desc' })).toEqual(a.slice(-5).reverse());
      expect(ids({ vm: 'vm-a', limit: 7, afterId: a[30_000] })).toEqual(a.slice(30_001, 30_008));
      // a page that starts in one bucket and ends in the next
      const edge = a.findIndex((id) => id > BUCKET) - 3;
      expect(ids({ vm: 'vm-a', limit: 6, afterId: a[edge] })).toEqual(a.slice(edge + 1, edge + 7));
      // time ranges: vm-a's k-th event (from 0) has host time T0 + 30k + 10
      expect(ids({ vm: 'vm-a', sinceUs: T0_US + 30 * 100 + 10, untilUs: T0_US + 30 * 110 + 10, limit: 100 })).toEqual(a.slice(100, 110));
      expect(ids({ vm: 'vm-a', sinceUs: T0_US + 30 * PER_VM + 10 })).toEqual([]);
      expect(ids({ vm: 'vm-b', plugin: 'oom' })).toEqual([]);
      // discarded events left out, unless asked for
      const c = byVm.get('vm-c') as number[];
      expect(ids({ vm: 'vm-c', limit: 100_000 })).toEqual(c.filter((_, k) => (k + 1) % 4 === 0));
      expect(ids({ vm: 'vm-c', limit: 100_000, includeDiscarded: true })).toEqual(c);
      expect(s.vmStats('vm-b')).toEqual({ events: PER_VM, oldestUs: T0_US + 20, newestUs: T0_US + 30 * (PER_VM - 1) + 20 });

      // New rows land in the tail until the next index pass; reads see them all the same.
      const before = rawCount('events.db', 'SELECT coalesce(sum(length(ids)), 0) / 2 FROM vm_ids');
      const late = s.append([guestEvent('vm-a', 'run', PER_VM + 1, { hostTimeUs: T0_US + 1e9 })]).stored[0]?.id as number;
      expect(rawCount('events.db', 'SELECT coalesce(sum(length(ids)), 0) / 2 FROM vm_ids')).toBe(before);
      expect(ids({ vm: 'vm-a', limit: 2, order: 'desc' })).toEqual([late, a.at(-1)]);
      expect(ids({ vm: 'vm-a', afterId: a.at(-2) })).toEqual([a.at(-1), late]);
      expect(s.vmStats('vm-a').events).toBe(PER_VM + 1);
      s.close();
      // closing brings the index up to date: every event is in it
      expect(before).toBeLessThan(3 * PER_VM);
      expect(rawCount('events.db', 'SELECT coalesce(sum(length(ids)), 0) / 2 FROM vm_ids')).toBe(3 * PER_VM + 1);
    },
  );

  it('still reads a VM correctly after retention deleted part of a bucket', () => {
    const s = EventStore.open(join(dir, 'events.db'), { retention: { maxAgeMs: 1 } });
    opened.push(s);
    const byVm = interleaved(s, 8_000);
    // delete the first 10,000 rows by age: a cut inside bucket 0
    const cutUs = T0_US + 10 * 10_000 + 1;
    let deleted = 0;
    for (let i = 0; i < 10; i++) deleted += s.prune(cutUs + 1000).deleted;
    expect(deleted).toBe(10_000);
    const survivors = (byVm.get('vm-b') as number[]).filter((id) => id > 10_000);
    expect(s.query({ vm: 'vm-b', limit: 100_000 }).map((e) => e.id)).toEqual(survivors);
    expect(s.vmStats('vm-b').events).toBe(survivors.length);
  });
});

describe('EventStore duplicates and host times', () => {
  it('recognises a resent record after a reopen, whether or not an index pass had taken it', () => {
    const s = open();
    s.append([guestEvent('vm-a', 'r', 1), guestEvent('vm-a', 'r', 2)]);
    s.close();
    // a writer killed before its pass: the rows are there, the runs table does not know them
    const raw = new Database(join(dir, 'events.db'));
    raw.exec(`INSERT INTO events (vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload)
              VALUES ('vm-a', 'signal', 0, 'signal_generate', 1, ${T0_US + 9000}, 'r', 3, 'notify', '{}')`);
    raw.close();
    const again = open();
    expect(again.highestSeq('vm-a', 'r')).toBe(3);
    const r = again.append([guestEvent('vm-a', 'r', 2), guestEvent('vm-a', 'r', 3), guestEvent('vm-a', 'r', 4)]);
    expect(r.duplicates).toBe(2);
    expect(r.stored.map((e) => e.source?.seq)).toEqual([4]);
  });

  it('gives an event at least the host time of the one stored before it, so ids and host times rise together', () => {
    const s = open();
    const { stored } = s.append([
      guestEvent('vm-a', 'r', 1, { hostTimeUs: T0_US + 5000 }),
      hostEvent({ hostTimeUs: T0_US + 1000 }), // the host clock stepped back
      guestEvent('vm-a', 'r', 2, { hostTimeUs: T0_US + 6000 }),
    ]);
    expect(stored.map((e) => e.hostTimeUs)).toEqual([T0_US + 5000, T0_US + 5000, T0_US + 6000]);
    s.close();
    const again = open();
    const later = again.append([hostEvent({ hostTimeUs: T0_US })]).stored[0];
    expect(later?.hostTimeUs).toBe(T0_US + 6000);
    expect(again.query({ sinceUs: T0_US + 5000 }).map((e) => e.id)).toEqual([...stored, later].map((e) => e?.id));
  });

  it('leaves nothing changed when a batch fails: no ids, no remembered seq, no host time', () => {
    const s = open();
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(() => s.append([guestEvent('vm-a', 'r', 1, { hostTimeUs: T0_US + 9e9 }), hostEvent({ payload: circular })])).toThrow();
    expect(s.highestSeq('vm-a', 'r')).toBe(0);
    const ok = s.append([guestEvent('vm-a', 'r', 1, { hostTimeUs: T0_US + 10 })]).stored[0];
    expect(ok?.hostTimeUs).toBe(T0_US + 10);
  });
});

describe('EventStore guest records', () => {
  it('keeps a record as its bytes and gives back the same payload', () => {
    const s = open();
    const bytes = v1.Record.encode({
      seq: 7,
      monoNs: 123_456_789,
      wallNs: 1.75e18,
      handle: 2,
      eventId: 1,
      signal: { sig: 11, code: 1, target: { pid: 4242, comm: 'crasher' }, senderIsKernel: true },
    }).finish();
    const raw = v1.Record.decode(bytes);
    const ev = new RecordEvent('vm-a', 'signal', 0, 'signal_generate', 1_750_000_000_000_000, T0_US, { agentRun: 'r', seq: 7 }, bytes, raw);
    ev.disposition = 'notify';
    const want = ev.payload;
    expect(want).toMatchObject({ signal: { sig: 11, code: 1, target: { pid: 4242, comm: 'crasher' } }, monoNs: 123_456_789 });
    s.append([ev]);
    expect(rawCount('events.db', "SELECT typeof(payload) FROM events WHERE vm = 'vm-a'")).toBe('blob');
    const [back] = s.query();
    expect(back).toBeInstanceOf(RecordEvent);
    expect(back?.payload).toEqual(want);
    expect(JSON.parse(JSON.stringify(back))).toEqual({ ...JSON.parse(JSON.stringify(ev)), id: back?.id });
  });
});

describe('EventStore schema', () => {
  it('brings a version 2 file to the current version: its events read by VM, its runs and duplicates kept', () => {
    const path = join(dir, 'v2.db');
    const raw = new Database(path);
    raw.exec(MIGRATIONS[0] as string);
    raw.exec(MIGRATIONS[1] as string);
    raw.pragma('user_version = 2');
    const ins = raw.prepare(
      `INSERT INTO events (vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload)
       VALUES (?, 'signal', 0, 'signal_generate', 1, ?, 'r', ?, 'notify', '{"sig":9}')`,
    );
    for (let seq = 1; seq <= 50; seq++) ins.run(seq % 2 ? 'vm-a' : 'vm-b', T0_US + seq, seq);
    raw.prepare("INSERT INTO runs VALUES ('vm-a', 'r', 49), ('vm-b', 'r', 50)").run();
    raw.close();

    const s = EventStore.open(path);
    opened.push(s);
    expect(s.query({ vm: 'vm-a', limit: 100 }).map((e) => e.source?.seq)).toEqual(Array.from({ length: 25 }, (_, k) => 2 * k + 1));
    expect(s.query({ vm: 'vm-b', limit: 1 })[0]?.payload).toEqual({ sig: 9 });
    expect(s.highestSeq('vm-b', 'r')).toBe(50);
    expect(s.append([guestEvent('vm-a', 'r', 49), guestEvent('vm-a', 'r', 51)]).duplicates).toBe(1);
  });
});
