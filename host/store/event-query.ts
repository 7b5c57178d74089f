// Reading events back: the filters a subscriber, the CLI or a test can combine. Each combination
// of filters is one SQL text, prepared once and kept, so a subscriber polling with the same
// shape of query does not re-parse SQL.

import type Database from 'better-sqlite3';
import type { VesperEvent } from '../notify/event.js';
import { EVENT_COLUMNS, eventFromRow, type EventRow } from './event-row.js';

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
  /** events the filter discarded are left out unless this is true */
  includeDiscarded?: boolean;
  /** default DEFAULT_QUERY_LIMIT, at most MAX_QUERY_LIMIT */
  limit?: number;
  /** by id; default 'asc' */
  order?: 'asc' | 'desc';
}

export const DEFAULT_QUERY_LIMIT = 1000;
export const MAX_QUERY_LIMIT = 100_000;

function effectiveLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_QUERY_LIMIT;
  return Math.min(MAX_QUERY_LIMIT, Math.max(0, Math.floor(limit)));
}

export class EventQueryRunner {
  private readonly statements = new Map<string, Database.Statement<unknown[], EventRow>>();

  constructor(private readonly db: Database.Database) {}

  run(q: EventQuery): VesperEvent[] {
    const where: string[] = [];
    const params: unknown[] = [];
    const filter = (sql: string, value: unknown): void => {
      where.push(sql);
      params.push(value);
    };
    if (q.vm !== undefined) filter('vm = ?', q.vm);
    if (q.plugin !== undefined) filter('plugin = ?', q.plugin);
    if (q.event !== undefined) filter('event = ?', q.event);
    if (q.sinceUs !== undefined) filter('host_time_us >= ?', q.sinceUs);
    if (q.untilUs !== undefined) filter('host_time_us < ?', q.untilUs);
    if (q.afterId !== undefined) filter('id > ?', q.afterId);
    // IS NOT, not !=: a row stored without a disposition (NULL) is not a discarded one.
    if (q.includeDiscarded !== true) where.push("disposition IS NOT 'discard'");
    params.push(effectiveLimit(q.limit));

    const sql =
      `SELECT ${EVENT_COLUMNS} FROM events` +
      (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
      ` ORDER BY id ${q.order === 'desc' ? 'DESC' : 'ASC'} LIMIT ?`;
    let stmt = this.statements.get(sql);
    if (stmt === undefined) {
      stmt = this.db.prepare<unknown[], EventRow>(sql);
      this.statements.set(sql, stmt);
    }
    return stmt.all(...params).map(eventFromRow);
  }
}
