// The store's schema and its versions. `PRAGMA user_version` holds the version a file is at;
// MIGRATIONS[n] takes a file from version n to n + 1, so a later vesper appends a step here and
// older files catch up on open. A file from a newer vesper is refused rather than guessed at.

import type Database from 'better-sqlite3';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { SINK_CURSORS_SCHEMA } from './sink-cursors.js';
import { VM_INDEX_SCHEMA, VmIndex } from './vm-index.js';

const V1 = `
CREATE TABLE events (
  -- AUTOINCREMENT: ids are cursors for subscribers, so an id is never handed out twice,
  -- even after retention has deleted every row. They increase but may skip: an insert
  -- refused as a duplicate uses one up.
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  vm TEXT NOT NULL,
  plugin TEXT NOT NULL,
  instance INTEGER NOT NULL,
  event TEXT NOT NULL,
  guest_time_us INTEGER,
  host_time_us INTEGER NOT NULL,
  agent_run TEXT,
  seq INTEGER,
  -- 'notify' | 'discard' | 'action'; NULL if stored before the filter ran
  disposition TEXT,
  payload TEXT NOT NULL
  -- No CHECK constraints: they cost 15-20% of ingest throughput (measured), and append()
  -- writes agent_run and seq from one source object, so they are set or NULL together.
);
-- A guest record is identified by (vm, agent_run, seq); a resent one conflicts here and is
-- dropped. Host events (no agent run) stay out of the index and are never deduplicated.
CREATE UNIQUE INDEX events_by_source ON events (vm, agent_run, seq) WHERE agent_run IS NOT NULL;
CREATE INDEX events_by_vm_time ON events (vm, host_time_us);
CREATE INDEX events_by_time ON events (host_time_us);

CREATE TABLE attachments (
  vm TEXT NOT NULL,
  probe TEXT NOT NULL,
  instances INTEGER NOT NULL,
  params TEXT NOT NULL,
  attached_at INTEGER NOT NULL,
  PRIMARY KEY (vm, probe)
);

-- '*' in a key column means "any"; instance is text so that it can hold '*'.
CREATE TABLE filters (
  vm TEXT NOT NULL,
  plugin TEXT NOT NULL,
  instance TEXT NOT NULL,
  event TEXT NOT NULL,
  decision TEXT NOT NULL,
  PRIMARY KEY (vm, plugin, instance, event)
);

CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
`;

// What the manager tells a reconnecting agent it already holds must not shrink when retention
// deletes a run's newest rows (the agent would resend what was pruned), so the highest
// sequence number of every agent run is kept on its own, one row a run.
const V2 = `
CREATE TABLE runs (
  vm TEXT NOT NULL,
  agent_run TEXT NOT NULL,
  high_seq INTEGER NOT NULL,
  PRIMARY KEY (vm, agent_run)
) WITHOUT ROWID;
INSERT INTO runs (vm, agent_run, high_seq)
  SELECT vm, agent_run, max(seq) FROM events WHERE agent_run IS NOT NULL GROUP BY vm, agent_run;
`;

/** meta key: every event up to this id is in vm_ids and runs */
export const INDEXED_THROUGH_KEY = 'store.indexed_through';

// Ingest at the rate of many guests at once: the events table is only appended to (by id, plus
// the host-time index, which also grows at its end). Per-row indexes keyed by VM, or by VM,
// agent run and seq, put every insert at a different place in a large B-tree: measured with
// 1,000 VMs interleaved, they cut appends from ~260,000 to ~20,000-50,000 rows/s. So
// duplicates are recognised in memory (the store keeps each run's highest seq; see runs), and
// the by-VM index is vm_ids (vm-index.ts), written in passes.
function v3(db: Database.Database): void {
  db.exec(`
    DROP INDEX events_by_source;
    DROP INDEX events_by_vm_time;
    ${VM_INDEX_SCHEMA}
  `);
  const index = new VmIndex(db);
  let last = 0;
  for (const row of db.prepare('SELECT id, vm FROM events ORDER BY id').iterate() as IterableIterator<{ id: number; vm: string }>) {
    index.note(row.vm, row.id);
    last = row.id;
  }
  index.write();
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(
    INDEXED_THROUGH_KEY,
    String(last),
  );
}

// Host time is an id bound (time-ids.ts), so the index on host time goes: with a thousand guests
// it was a second B-tree insert per event, ~0.5 of ~3.2 us per stored event (measured with 1,000
// VMs interleaved, batches of 4,500). Rows of a file written before the store kept host times
// monotonic along ids are raised to the running maximum first, so the bisection holds for them.
const V4 = `
UPDATE events SET host_time_us = w.m
  FROM (SELECT id, max(host_time_us) OVER (ORDER BY id) AS m FROM events) AS w
  WHERE events.id = w.id AND events.host_time_us < w.m;
DROP INDEX IF EXISTS events_by_time;
`;

// Export sinks keep their cursors in the store (sink-cursors.ts, host/export/).
const V5 = SINK_CURSORS_SCHEMA;

/** Step n takes a file from version n to n + 1: SQL, or code where SQL alone cannot. */
export const MIGRATIONS: ReadonlyArray<string | ((db: Database.Database) => void)> = [V1, V2, v3, V4, V5];

/** The version this code writes and reads. */
export const SCHEMA_VERSION = MIGRATIONS.length;

function userVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

function refuseNewer(path: string, version: number): void {
  if (version > SCHEMA_VERSION) {
    throw new VesperError(
      ErrorCode.STORE_FAILED,
      `event store ${path}: schema version ${version} is newer than this vesper supports (${SCHEMA_VERSION}); ` +
        'upgrade vesper or use another store file',
    );
  }
}

/** Brings the file to SCHEMA_VERSION. Call before any other use of `db`, journal mode included. */
export function migrate(db: Database.Database, path: string): void {
  const before = userVersion(db);
  refuseNewer(path, before);
  if (before === SCHEMA_VERSION) return;
  if (before === 0) {
    // Only takes effect on a file without pages yet, so before the switch to WAL; it lets
    // retention give pages back to the file system (incremental_vacuum) without a full VACUUM.
    db.pragma('auto_vacuum = INCREMENTAL');
  }
  // IMMEDIATE, and the version read again inside: two processes opening a new file at once
  // must not both run the same step.
  db.transaction(() => {
    const current = userVersion(db);
    refuseNewer(path, current);
    for (let v = current; v < SCHEMA_VERSION; v++) {
      const step = MIGRATIONS[v] as string | ((db: Database.Database) => void);
      if (typeof step === 'string') db.exec(step);
      else step(db);
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}
