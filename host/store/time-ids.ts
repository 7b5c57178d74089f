// Host time to event id. The store gives every event at least the host time of the one before
// it (event-store.ts, append), so host time never decreases along ids and a time bound is an id
// bound. That is found by bisecting the id range through the rowid B-tree (a few dozen seeks),
// which is why the events table needs no index on host time: keeping one cost every insert a
// second B-tree update, about a sixth of the store's time per event with a thousand guests
// (measured, see schema.ts v4).

import type Database from 'better-sqlite3';

export class TimeIds {
  private readonly spanStmt: Database.Statement<[], { lo: number | null; hi: number | null }>;
  private readonly atOrAfterStmt: Database.Statement<[number], { id: number; t: number }>;
  private readonly timeOfStmt: Database.Statement<[number], number>;

  constructor(db: Database.Database) {
    // Two subqueries: each is answered from an end of the rowid B-tree; min and max in one SELECT scan it all.
    this.spanStmt = db.prepare('SELECT (SELECT min(id) FROM events) AS lo, (SELECT max(id) FROM events) AS hi');
    this.atOrAfterStmt = db.prepare<[number], { id: number; t: number }>(
      'SELECT id, host_time_us AS t FROM events WHERE id >= ? ORDER BY id LIMIT 1',
    );
    this.timeOfStmt = db.prepare<[number], number>('SELECT host_time_us FROM events WHERE id = ?').pluck();
  }

  /** The lowest and highest id stored (nulls when the table is empty). */
  span(): { lo: number | null; hi: number | null } {
    return this.spanStmt.get() ?? { lo: null, hi: null };
  }

  /** Host time of the event with this id (undefined when there is none). */
  timeOf(id: number): number | undefined {
    return this.timeOfStmt.get(id);
  }

  /** The first id whose host time is at or after `timeUs`; null when every event is older. */
  firstAtOrAfter(timeUs: number): number | null {
    const { lo, hi } = this.span();
    if (lo === null || hi === null) return null;
    const last = this.timeOf(hi);
    if (last === undefined || last < timeUs) return null;
    // The smallest x in [lo, hi] whose first event at or after x is recent enough: that event's
    // id is the answer. The test only turns from false to true as x grows.
    let a = lo;
    let b = hi;
    while (a < b) {
      const mid = a + Math.floor((b - a) / 2);
      const row = this.atOrAfterStmt.get(mid);
      if (row !== undefined && row.t >= timeUs) b = mid;
      else a = mid + 1;
    }
    return this.atOrAfterStmt.get(a)?.id ?? null;
  }

  /** The first id at or after `timeUs`, or `nextId` (the id the next event will get) when none is. */
  boundAt(timeUs: number, nextId: number): number {
    return this.firstAtOrAfter(timeUs) ?? nextId;
  }
}
