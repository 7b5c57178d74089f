// The export sinks' outbox reads: each sink's cursor (the id of the last event it delivered),
// kept in the store file so that a restarted vesperd resumes where every sink was, and the reads
// a sink runner makes after its cursor. See host/export/exporter.ts.

import type Database from 'better-sqlite3';
import { EVENT_COLUMNS, type EventRow } from './event-row.js';

/** Schema step: one row per sink name. */
export const SINK_CURSORS_SCHEMA = `
CREATE TABLE sink_cursors (
  name TEXT PRIMARY KEY,
  -- the id of the last event delivered: the sink goes on with the events after it
  cursor INTEGER NOT NULL,
  -- events retention deleted before this sink delivered them (at the store's hard size limit)
  lost INTEGER NOT NULL DEFAULT 0,
  updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
`;

export interface SinkCursor {
  cursor: number;
  lost: number;
}

export class SinkCursorTable {
  private readonly getStmt: Database.Statement<[string], SinkCursor>;
  private readonly setStmt: Database.Statement<[string, number, number]>;
  private readonly lostStmt: Database.Statement<[number, number, string]>;
  private readonly allStmt: Database.Statement<[], { name: string; cursor: number; lost: number }>;
  private readonly afterStmt: Database.Statement<[number, number], EventRow>;
  private readonly countAfterStmt: Database.Statement<[number], number>;

  constructor(db: Database.Database) {
    this.getStmt = db.prepare<[string], SinkCursor>('SELECT cursor, lost FROM sink_cursors WHERE name = ?');
    this.setStmt = db.prepare(
      'INSERT INTO sink_cursors (name, cursor, updated_at_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, updated_at_ms = excluded.updated_at_ms',
    );
    this.lostStmt = db.prepare('UPDATE sink_cursors SET lost = lost + ?, updated_at_ms = ? WHERE name = ?');
    this.allStmt = db.prepare('SELECT name, cursor, lost FROM sink_cursors ORDER BY name');
    this.afterStmt = db.prepare<[number, number], EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?`);
    this.countAfterStmt = db.prepare<[number], number>('SELECT count(*) FROM events WHERE id > ?').pluck();
  }

  get(name: string): SinkCursor | undefined {
    return this.getStmt.get(name);
  }

  set(name: string, cursor: number): void {
    this.setStmt.run(name, cursor, Date.now());
  }

  addLost(name: string, n: number): void {
    this.lostStmt.run(n, Date.now(), name);
  }

  all(): { name: string; cursor: number; lost: number }[] {
    return this.allStmt.all();
  }

  /** Up to `limit` events after `cursor`, in id order. */
  after(cursor: number, limit: number): EventRow[] {
    return this.afterStmt.all(cursor, limit);
  }

  /** How many events are stored after `cursor` (a sink's backlog). */
  countAfter(cursor: number): number {
    return this.countAfterStmt.get(cursor) ?? 0;
  }
}
