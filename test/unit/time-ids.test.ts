// Host time to id without an index on host time: bisection over ids (time-ids.ts) against the
// plain answer, with the gaps real stores have (ids skipped, rows deleted, equal times), and
// the schema step that drops the index and makes old rows' times monotonic.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventStore } from '../../host/store/event-store.js';
import { MIGRATIONS } from '../../host/store/schema.js';
import { TimeIds } from '../../host/store/time-ids.js';
import { hostEvent, T0_US } from './event-store-fixtures.js';

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-time-ids-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function table(): Database.Database {
  const db = new Database(':memory:');
  db.exec('CREATE TABLE events (id INTEGER PRIMARY KEY, host_time_us INTEGER NOT NULL)');
  return db;
}

describe('TimeIds', () => {
  it('finds the first id at or after a time as a scan would, whatever the gaps in ids and repeats in times', () => {
    fc.assert(
      fc.property(
        // rows: (id step >= 1, time step >= 0), so ids have gaps and times repeat but never fall
        fc.array(fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 3 })), { maxLength: 60 }),
        fc.integer({ min: -2, max: 200 }),
        (steps, probe) => {
          const db = table();
          try {
            const ins = db.prepare('INSERT INTO events (id, host_time_us) VALUES (?, ?)');
            let id = 0;
            let t = 0;
            const rows: { id: number; t: number }[] = [];
            for (const [di, dt] of steps) {
              id += di;
              t += dt;
              ins.run(id, t);
              rows.push({ id, t });
            }
            const want = rows.find((r) => r.t >= probe)?.id ?? null;
            expect(new TimeIds(db).firstAtOrAfter(probe)).toBe(want);
            expect(new TimeIds(db).boundAt(probe, id + 1)).toBe(want ?? id + 1);
          } finally {
            db.close();
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('answers at the ends and in the middle of a million rows', () => {
    const db = table();
    try {
      db.exec(
        'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) INSERT INTO events SELECT i * 3, i / 7 FROM n',
      );
      const times = new TimeIds(db);
      expect(times.firstAtOrAfter(-1)).toBe(3);
      expect(times.firstAtOrAfter(100_000)).toBe(700_000 * 3);
      expect(times.firstAtOrAfter(142_857)).toBe(999_999 * 3);
      expect(times.firstAtOrAfter(142_858)).toBeNull();
    } finally {
      db.close();
    }
  });
});

describe('schema step 4', () => {
  it('drops the host-time index and raises older rows to the running maximum, so time queries stay right', () => {
    const path = join(dir, 'v3.db');
    const raw = new Database(path);
    for (const step of MIGRATIONS.slice(0, 3)) {
      if (typeof step === 'string') raw.exec(step);
      else step(raw);
    }
    raw.pragma('user_version = 3');
    // written before host times were kept monotonic: the third row is older than the second
    const ins = raw.prepare(
      `INSERT INTO events (id, vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload)
       VALUES (?, 'vm-a', 'libvirt', 0, 'lifecycle', NULL, ?, NULL, NULL, 'notify', '{}')`,
    );
    ins.run(1, T0_US + 10);
    ins.run(2, T0_US + 30);
    ins.run(3, T0_US + 20);
    ins.run(4, T0_US + 40);
    raw.close();

    const s = EventStore.open(path);
    try {
      const check = new Database(path, { readonly: true });
      try {
        expect(check.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'events_by_time'").pluck().get()).toBe(0);
        expect(check.prepare('SELECT host_time_us FROM events ORDER BY id').pluck().all()).toEqual([
          T0_US + 10,
          T0_US + 30,
          T0_US + 30,
          T0_US + 40,
        ]);
      } finally {
        check.close();
      }
      expect(s.query({ sinceUs: T0_US + 25 }).map((e) => e.id)).toEqual([2, 3, 4]);
      expect(s.query({ vm: 'vm-a', untilUs: T0_US + 31 }).map((e) => e.id)).toEqual([1, 2, 3]);
      expect(s.stats()).toMatchObject({ events: 4, oldestUs: T0_US + 10, newestUs: T0_US + 40 });
      // a new event is never given an earlier host time than the newest stored
      const [e] = s.append([hostEvent({ hostTimeUs: T0_US + 1 })]).stored;
      expect(e?.hostTimeUs).toBe(T0_US + 40);
    } finally {
      s.close();
    }
  });
});
