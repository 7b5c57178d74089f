// The store's schema and its versions. `PRAGMA user_version` holds the version a file is at;
// MIGRATIONS[n] takes a file from version n to n + 1, so a later vesper appends a step here and
// older files catch up on open. A file from a newer vesper is refused rather than guessed at.

import type Database from 'better-sqlite3';
import { ErrorCode, VesperError } from '../../proto/errors.js';

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

/** ids per bucket of the by-VM index: 2^VM_BUCKET_SHIFT */
export const VM_BUCKET_SHIFT = 14;
/** The bucket of an id in events_by_vm (SQL: id >> VM_BUCKET_SHIFT; ids outgrow JS's 32-bit shifts). */
export function bucketOf(id: number): number {
  return Math.floor(id / 2 ** VM_BUCKET_SHIFT);
}
/** meta key: every event up to this id is in events_by_vm and runs */
export const INDEXED_THROUGH_KEY = 'store.indexed_through';

// Ingest at the rate of many guests at once: the events table is only appended to (by id, plus
// the host-time index, which also grows at its end). Per-row indexes keyed by VM, or by VM,
// agent run and seq, put every insert at a different place in a large B-tree: measured with
// 1,000 VMs interleaved, they cut appends from ~260,000 to ~20,000-50,000 rows/s. So:
// - duplicates are recognised in memory (the store keeps each run's highest seq; see runs);
// - the by-VM index is its own table, filled from the newest rows in sorted passes every
//   fraction of a second rather than row by row. Its key starts with a bucket of ids
//   (id >> VM_BUCKET_SHIFT), so a pass writes into the newest bucket only. Rows after
//   INDEXED_THROUGH_KEY (a fraction of a second of them) are found by scanning.
const V3 = `
DROP INDEX events_by_source;
DROP INDEX events_by_vm_time;
CREATE TABLE events_by_vm (
  bucket INTEGER NOT NULL,
  vm TEXT NOT NULL,
  id INTEGER NOT NULL,
  PRIMARY KEY (bucket, vm, id)
) WITHOUT ROWID;
INSERT INTO events_by_vm (bucket, vm, id) SELECT id >> ${VM_BUCKET_SHIFT}, vm, id FROM events ORDER BY 1, 2, 3;
INSERT INTO meta (key, value) SELECT '${INDEXED_THROUGH_KEY}', coalesce(max(id), 0) FROM events WHERE true
  ON CONFLICT (key) DO UPDATE SET value = excluded.value;
`;

export const MIGRATIONS: readonly string[] = [V1, V2, V3];

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
      db.exec(MIGRATIONS[v] as string);
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}
