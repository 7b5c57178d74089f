// Reading events back: the filters a subscriber, the CLI or a test can combine. Each combination
// of filters is one SQL text, prepared once and kept, so a subscriber polling with the same
// shape of query does not re-parse SQL.
//
// A query for one VM reads the VM's ids from the by-VM index (vm-index.ts) bucket by bucket in
// id order and fetches those rows, then scans the newest rows the index does not hold yet, so
// it never reads other VMs' events beyond those. Host times never decrease along ids (the store
// keeps them so), which turns a time range into an id range (time-ids.ts): that is how every
// query with a time range finds its rows; there is no index on host time.

import type Database from 'better-sqlite3';
import type { VesperEvent } from '../notify/event.js';
import { EVENT_COLUMNS, eventFromRow, type EventRow } from './event-row.js';
import { TimeIds } from './time-ids.js';
import type { VmIndex } from './vm-index.js';

export interface EventQuery {
  vm?: string;
  plugin?: string;
  event?: string;
  /** host time, inclusive: hostTimeUs >= sinceUs */
  sinceUs?: number;
  /** host time, exclusive: hostTimeUs < untilUs */
  untilUs?: number;
  /** only ids greater than this (whatever the order): a subscriber's cursor */
  afterId?: number;
  /** only ids less than this: a cursor for reading backwards (order 'desc') page by page */
  beforeId?: number;
  /** only events of one of these (plugin, event) pairs (in addition to plugin and event) */
  kinds?: ReadonlyArray<{ plugin: string; event: string }>;
  /** events the filter discarded are left out unless this is true */
  includeDiscarded?: boolean;
  /** default DEFAULT_QUERY_LIMIT, at most MAX_QUERY_LIMIT */
  limit?: number;
  /** by id; default 'asc' */
  order?: 'asc' | 'desc';
}

export const DEFAULT_QUERY_LIMIT = 1000;
/** ids fetched per statement when reading one VM's events */
const ID_CHUNK = 512;
export const MAX_QUERY_LIMIT = 100_000;

function effectiveLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_QUERY_LIMIT;
  return Math.min(MAX_QUERY_LIMIT, Math.max(0, Math.floor(limit)));
}

const E_COLUMNS = EVENT_COLUMNS.split(', ')
  .map((c) => `e.${c}`)
  .join(', ');

/** The row conditions of a query other than its VM, for table alias `e`. */
function rowFilters(q: EventQuery): { where: string[]; params: unknown[] } {
  const where: string[] = [];
  const params: unknown[] = [];
  const filter = (sql: string, value: unknown): void => {
    where.push(sql);
    params.push(value);
  };
  if (q.plugin !== undefined) filter('e.plugin = ?', q.plugin);
  if (q.event !== undefined) filter('e.event = ?', q.event);
  if (q.sinceUs !== undefined) filter('e.host_time_us >= ?', q.sinceUs);
  if (q.untilUs !== undefined) filter('e.host_time_us < ?', q.untilUs);
  if (q.kinds !== undefined) {
    // One SQL text per number of pairs: a caller with a fixed list prepares it once.
    if (q.kinds.length === 0) where.push('0');
    else where.push(`(${q.kinds.map(() => '(e.plugin = ? AND e.event = ?)').join(' OR ')})`);
    for (const k of q.kinds) params.push(k.plugin, k.event);
  }
  // IS NOT, not !=: a row stored without a disposition (NULL) is not a discarded one.
  if (q.includeDiscarded !== true) where.push("e.disposition IS NOT 'discard'");
  return { where, params };
}

export class EventQueryRunner {
  private readonly statements = new Map<string, Database.Statement<unknown[], EventRow>>();
  private readonly times: TimeIds;

  constructor(private readonly db: Database.Database) {
    this.times = new TimeIds(db);
  }

  /** `indexedThrough`: every event up to this id is in `index`. */
  run(q: EventQuery, index: VmIndex, indexedThrough: number): VesperEvent[] {
    const limit = effectiveLimit(q.limit);
    if (limit === 0) return [];
    if (q.vm === undefined) return this.scan(q, limit);
    return this.forVm(q, q.vm, limit, index, indexedThrough);
  }

  private prepared(sql: string): Database.Statement<unknown[], EventRow> {
    let stmt = this.statements.get(sql);
    if (stmt === undefined) {
      stmt = this.db.prepare<unknown[], EventRow>(sql);
      this.statements.set(sql, stmt);
    }
    return stmt;
  }

  private scan(q: EventQuery, limit: number): VesperEvent[] {
    const { where, params } = rowFilters(q);
    // The time range as ids too, so that SQLite seeks to it instead of reading from one end.
    let afterId = q.afterId;
    let beforeId = q.beforeId;
    if (q.sinceUs !== undefined || q.untilUs !== undefined) {
      const range = this.idRange(q);
      if (range === null) return [];
      afterId = range.lo;
      beforeId = range.hi;
    }
    if (afterId !== undefined) {
      where.push('e.id > ?');
      params.push(afterId);
    }
    if (beforeId !== undefined) {
      where.push('e.id < ?');
      params.push(beforeId);
    }
    const sql =
      `SELECT ${E_COLUMNS} FROM events e` +
      (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
      ` ORDER BY e.id ${q.order === 'desc' ? 'DESC' : 'ASC'} LIMIT ?`;
    return this.prepared(sql)
      .all(...params, limit)
      .map(eventFromRow);
  }

  /** ids in (lo, hi): lo exclusive, hi exclusive, from the query's cursor and time range */
  private idRange(q: EventQuery): { lo: number; hi: number } | null {
    const span = this.times.span();
    if (span.lo === null || span.hi === null) return null;
    let lo = Math.max(span.lo - 1, q.afterId ?? -Infinity);
    let hi = Math.min(span.hi + 1, q.beforeId ?? Infinity);
    if (q.sinceUs !== undefined) {
      const first = this.times.firstAtOrAfter(q.sinceUs);
      if (first === null) return null;
      lo = Math.max(lo, first - 1);
    }
    if (q.untilUs !== undefined) {
      const first = this.times.firstAtOrAfter(q.untilUs);
      if (first !== null) hi = Math.min(hi, first);
    }
    return lo + 1 < hi ? { lo, hi } : null;
  }

  private forVm(q: EventQuery, vm: string, limit: number, index: VmIndex, indexedThrough: number): VesperEvent[] {
    const range = this.idRange(q);
    if (range === null) return [];
    const desc = q.order === 'desc';
    const dir = desc ? 'DESC' : 'ASC';
    const { where, params } = rowFilters(q);
    const extra = where.length > 0 ? ` AND ${where.join(' AND ')}` : '';
    const byIdsStmt = this.prepared(
      `SELECT ${E_COLUMNS} FROM events e WHERE e.id IN (SELECT value FROM json_each(?))${extra} ORDER BY e.id ${dir} LIMIT ?`,
    );
    const tailStmt = this.prepared(
      `SELECT ${E_COLUMNS} FROM events e WHERE e.id > ? AND e.id < ? AND e.vm = ?${extra} ORDER BY e.id ${dir} LIMIT ?`,
    );

    const rows: EventRow[] = [];
    const fromIndex = (): void => {
      for (const ids of index.idsOf(vm, range.lo, Math.min(range.hi, indexedThrough + 1), desc)) {
        for (let at = 0; at < ids.length && rows.length < limit; at += ID_CHUNK) {
          const chunk = JSON.stringify(ids.slice(at, at + ID_CHUNK));
          for (const r of byIdsStmt.all(chunk, ...params, limit - rows.length)) rows.push(r);
        }
        if (rows.length >= limit) return;
      }
    };
    const fromTail = (): void => {
      const lo = Math.max(range.lo, indexedThrough);
      if (lo + 1 >= range.hi || rows.length >= limit) return;
      for (const r of tailStmt.all(lo, range.hi, vm, ...params, limit - rows.length)) rows.push(r);
    };
    if (desc) {
      fromTail();
      fromIndex();
    } else {
      fromIndex();
      fromTail();
    }
    return rows.map(eventFromRow);
  }
}
