// Retention: keeps the events table within an age and a size. The daemon calls prune() on a
// timer, and a call must not hold the event loop (or the write lock other processes wait on)
// for long: deletes go in chunks, each its own transaction, and one call deletes at most
// `pruneBudgetRows` rows; `complete: false` tells the caller to come back soon.
//
// Size retention takes from the VMs over their share first: while the store is over maxBytes,
// a VM holding more than `vmShare` of the indexed events loses its own oldest events (the
// largest such VM first), and only when no VM is over its share are the oldest events deleted
// whoever's they are. So a guest that floods the store with valid records pushes out its own
// history, not every other VM's. A VM's events are found through vm_ids (no per-row index:
// see schema.ts), deleted as one id range filtered by vm, and its vm_ids entries go with them,
// so vm_ids stays exact above the oldest event left.
//
// Size is measured as the database's live pages: (page_count - freelist_count) x page_size of
// the main file, as SQLite sees it including committed WAL frames. The WAL file itself is not
// counted: it is bounded separately (wal_autocheckpoint and journal_size_limit) and emptied by
// the checkpoint at the end of prune.

import type Database from 'better-sqlite3';
import { TimeIds } from './time-ids.js';
import type { VmIndex } from './vm-index.js';

export interface Retention {
  /** delete events whose host time is older than this */
  maxAgeMs?: number;
  /** delete the oldest events while the live database is larger than this */
  maxBytes?: number;
  /** at most this many rows deleted per prune() call (default PRUNE_BUDGET_ROWS) */
  pruneBudgetRows?: number;
  /**
   * Over maxBytes, a VM holding more than this share (0-1] of the events loses its own oldest
   * first. Default 1: the oldest events first, whoever's.
   */
  vmShare?: number;
}

export interface PruneResult {
  deleted: number;
  /** false when the call stopped at its budget with retention still exceeded */
  complete: boolean;
}

export const PRUNE_BUDGET_ROWS = 20_000;
/** rows per delete transaction: a few milliseconds of work */
const CHUNK_ROWS = 1000;
/** smallest size-driven chunk, so that a page-granular size does not crawl row by row */
const MIN_SIZE_CHUNK_ROWS = 32;
const WAL_LIMIT_BYTES = 32 * 1024 * 1024;

export class RetentionPruner {
  private readonly liveBytesStmt: Database.Statement<[], number>;
  private readonly freePagesStmt: Database.Statement<[], number>;
  private readonly idSpanStmt: Database.Statement<[], { lo: number | null; hi: number | null }>;
  private readonly deleteOlderStmt: Database.Statement<[number, number]>;
  private readonly anyOlderStmt: Database.Statement<[number], number>;
  private readonly times: TimeIds;
  private readonly deleteOldestStmt: Database.Statement<[number]>;
  private readonly oldestIdStmt: Database.Statement<[], number | null>;
  private readonly deleteVmRangeStmt: Database.Statement<[number, number, string]>;
  private readonly deleteVmOldest: Database.Transaction<(vm: string, lo: number, hi: number, index: VmIndex) => number>;

  constructor(
    private readonly db: Database.Database,
    private readonly retention: Retention,
  ) {
    // After a checkpoint that emptied the WAL, SQLite cuts the -wal file back to this size
    // instead of leaving it at its high-water mark.
    db.pragma(`journal_size_limit = ${WAL_LIMIT_BYTES}`);
    this.liveBytesStmt = db
      .prepare<[], number>(
        'SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s',
      )
      .pluck();
    this.freePagesStmt = db.prepare<[], number>('SELECT freelist_count FROM pragma_freelist_count()').pluck();
    // Two subqueries: each is answered from an end of the rowid B-tree; min and max in one SELECT scan it all.
    this.idSpanStmt = db.prepare('SELECT (SELECT min(id) FROM events) AS lo, (SELECT max(id) FROM events) AS hi');
    // Age is an id bound (time-ids.ts): host time never decreases along ids.
    this.deleteOlderStmt = db.prepare('DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < ? ORDER BY id LIMIT ?)');
    this.anyOlderStmt = db.prepare<[number], number>('SELECT 1 FROM events WHERE id < ? LIMIT 1').pluck();
    this.times = new TimeIds(db);
    this.deleteOldestStmt = db.prepare('DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)');
    this.oldestIdStmt = db.prepare<[], number | null>('SELECT min(id) FROM events').pluck();
    // A range of the rowid B-tree, each row's vm checked: the VM holds a large share of it.
    this.deleteVmRangeStmt = db.prepare('DELETE FROM events WHERE id >= ? AND id <= ? AND vm = ?');
    this.deleteVmOldest = db.transaction((vm: string, lo: number, hi: number, index: VmIndex) => {
      const n = this.deleteVmRangeStmt.run(lo, hi, vm).changes;
      index.dropVmThrough(vm, hi);
      return n;
    });
  }

  liveBytes(): number {
    return this.liveBytesStmt.get() ?? 0;
  }

  /**
   * `nextId`: the id the next event will get (so: every id below it may have been used).
   * `holdFrom`: age retention keeps every event at or after this id (see EventStore.prune).
   */
  prune(nowUs: number, nextId: number, vmIndex: VmIndex, holdFrom?: number): PruneResult {
    let budget = this.retention.pruneBudgetRows ?? PRUNE_BUDGET_ROWS;
    let deleted = 0;
    let complete = true;

    const { maxAgeMs, maxBytes } = this.retention;
    if (maxAgeMs !== undefined) {
      // Held behind the export sinks: an event a sink has not delivered is not old enough.
      const ageBound = this.times.boundAt(nowUs - maxAgeMs * 1000, nextId);
      const cutoffId = holdFrom === undefined ? ageBound : Math.min(ageBound, holdFrom);
      while (budget > 0) {
        const n = this.deleteOlderStmt.run(cutoffId, Math.min(CHUNK_ROWS, budget)).changes;
        deleted += n;
        budget -= n;
        if (n === 0) break;
      }
      if (budget === 0 && this.anyOlderStmt.get(cutoffId) !== undefined) complete = false;
    }

    if (maxBytes !== undefined) {
      let live = this.liveBytes();
      const share = this.retention.vmShare ?? 1;
      /** indexed events per VM, read once per call when first needed, then kept up to date */
      let counts: Map<string, number> | null = null;
      while (live > maxBytes && budget > 0) {
        let n = 0;
        if (share < 1) {
          counts ??= vmIndex.counts(this.oldestIdStmt.get() ?? nextId);
          const over = overShare(counts, share);
          if (over !== null) {
            // rows counted, not estimated from the id span: a VM's deleted rows leave holes in it
            const rows = [...counts.values()].reduce((a, b) => a + b, 0);
            n = this.deleteOwnOldest(over, Math.min(this.sizeChunk(live, maxBytes, rows), budget), vmIndex);
            if (n > 0) counts.set(over, (counts.get(over) ?? 0) - n);
            else counts.delete(over); // nothing of it left to take (its events are all unindexed)
          }
        }
        if (n === 0) {
          n = this.deleteOldestStmt.run(Math.min(this.sizeChunk(live, maxBytes), budget)).changes;
          counts = null; // whose they were is not known: counted again if needed
        }
        if (n === 0) break; // nothing left to delete; the schema alone is larger than maxBytes
        deleted += n;
        budget -= n;
        live = this.liveBytes();
      }
      if (live > maxBytes && budget === 0) complete = false;
    }

    // The by-VM index loses whole buckets older than the oldest event left. Entries of deleted
    // events in the bucket the oldest is in stay until that bucket goes; queries join them to
    // nothing.
    if (deleted > 0) vmIndex.dropBelow(this.oldestIdStmt.get() ?? nextId);
    this.giveBackSpace(deleted > 0);
    return { deleted, complete };
  }

  /** Deletes up to `n` of the VM's oldest events and their vm_ids entries; how many went. */
  private deleteOwnOldest(vm: string, n: number, vmIndex: VmIndex): number {
    const ids = vmIndex.oldest(vm, this.oldestIdStmt.get() ?? 0, n);
    if (ids.length === 0) return 0;
    return this.deleteVmOldest(vm, ids[0] as number, ids[ids.length - 1] as number, vmIndex);
  }

  /**
   * How many of the oldest rows to delete next: the excess divided by the average row size
   * (`rows` when the caller counted them; else max - min + 1 estimates the row count without
   * a scan: ids skipped by refused duplicates make it high, so a chunk errs on the large side,
   * which the CHUNK_ROWS cap bounds),
   * within [MIN_SIZE_CHUNK_ROWS, CHUNK_ROWS].
   */
  private sizeChunk(live: number, maxBytes: number, rows?: number): number {
    let bytesPerRow: number;
    if (rows !== undefined && rows > 0) bytesPerRow = live / rows;
    else {
      const { lo, hi } = this.idSpanStmt.get() ?? { lo: null, hi: null };
      if (lo === null || hi === null) return MIN_SIZE_CHUNK_ROWS;
      bytesPerRow = live / (hi - lo + 1);
    }
    const excess = Math.ceil((live - maxBytes) / bytesPerRow);
    return Math.min(CHUNK_ROWS, Math.max(MIN_SIZE_CHUNK_ROWS, excess));
  }

  /**
   * Deleted rows only free pages inside the file. incremental_vacuum moves the free pages to
   * the end and drops them; the PASSIVE checkpoint then copies the WAL into the main file,
   * which is where the file actually shrinks. PASSIVE never waits for readers: if one is
   * active, the shrink simply happens at a later checkpoint.
   */
  private giveBackSpace(deletedRows: boolean): void {
    const freePages = this.freePagesStmt.get() ?? 0;
    if (freePages > 0) this.db.pragma('incremental_vacuum');
    if (deletedRows || freePages > 0) this.db.pragma('wal_checkpoint(PASSIVE)');
  }
}

/** The VM with the most events, if it holds more than `share` of them all; else null. */
function overShare(counts: Map<string, number>, share: number): string | null {
  let total = 0;
  let top: string | null = null;
  let most = 0;
  for (const [vm, n] of counts) {
    total += n;
    if (n > most) [top, most] = [vm, n];
  }
  return top !== null && most > share * total ? top : null;
}
