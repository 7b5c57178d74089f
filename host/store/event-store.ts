// The durable event store: one SQLite file (WAL) holding every event the manager accepted,
// plus the daemon's remembered state (daemon-state.ts). The ingest path is append(): the
// daemon acknowledges records to the agent only after it returns, so a batch is one
// transaction, committed (and with sync 'full', fsynced) before append returns.

import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from '../notify/event.js';
import {
  AttachmentTable,
  FilterTable,
  MetaTable,
  type Attachment,
  type AttachmentSpec,
  type FilterKey,
  type FilterRule,
} from './daemon-state.js';
import { EventQueryRunner, type EventQuery } from './event-query.js';
import { payloadJson } from './event-row.js';
import { RetentionPruner, type PruneResult, type Retention } from './retention.js';
import { migrate } from './schema.js';
import { storeError } from './store-error.js';

export type { Attachment, AttachmentSpec, FilterKey, FilterRule } from './daemon-state.js';
export { DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, type EventQuery } from './event-query.js';
export { PRUNE_BUDGET_ROWS, type PruneResult, type Retention } from './retention.js';
export { SCHEMA_VERSION } from './schema.js';

export interface EventStoreOptions {
  /**
   * 'full' (default): a committed batch survives power loss. 'normal': it survives a crash of
   * the daemon but the last batches may be lost if the host loses power.
   */
  sync?: 'normal' | 'full';
  retention?: Retention;
}

export interface AppendResult {
  /** the events that were new, in input order, each with its id set */
  stored: VesperEvent[];
  /** records already stored (same vm, agent run and seq) and not stored again */
  duplicates: number;
}

export interface SeqCount {
  count: number;
  distinct: number;
  /** 0 when there is none */
  min: number;
  max: number;
}

export interface VmStats {
  events: number;
  oldestUs: number | null;
  newestUs: number | null;
}

export interface StoreStats {
  events: number;
  /** live bytes of the database, the measure retention's maxBytes applies to */
  bytes: number;
  oldestUs: number | null;
  newestUs: number | null;
}

type InsertParams = [string, string, number, string, number | null, number, string | null, number | null, string | null, string];

const DIRECTORY_MODE = 0o750;

function checkOptions(path: string, opts: EventStoreOptions): void {
  const bad = (what: string): never => {
    throw new VesperError(ErrorCode.CONFIG_INVALID, `event store ${path}: ${what}`);
  };
  if (opts.sync !== undefined && opts.sync !== 'normal' && opts.sync !== 'full')
    bad(`sync must be 'normal' or 'full', not ${String(opts.sync)}`);
  const r = opts.retention ?? {};
  for (const [name, value] of Object.entries({ maxAgeMs: r.maxAgeMs, maxBytes: r.maxBytes, pruneBudgetRows: r.pruneBudgetRows })) {
    if (value !== undefined && !(Number.isFinite(value) && value > 0))
      bad(`retention.${name} must be a positive number, not ${String(value)}`);
  }
}

export class EventStore {
  private readonly insert: Database.Statement<InsertParams>;
  /** fills ids[i] with the new row id of events[i], or 0 for a duplicate (row ids start at 1) */
  private readonly insertBatch: Database.Transaction<(events: readonly VesperEvent[], ids: number[]) => void>;
  private readonly highestSeqStmt: Database.Statement<[string, string], number | null>;
  private readonly countSeqsStmt: Database.Statement<[string, string], SeqCount>;
  private readonly statsStmt: Database.Statement<[], VmStats>;
  private readonly vmStatsStmt: Database.Statement<[string], VmStats>;
  private readonly queries: EventQueryRunner;
  private readonly pruner: RetentionPruner;
  private readonly attachments: AttachmentTable;
  private readonly filters: FilterTable;
  private readonly meta: MetaTable;

  private constructor(
    private readonly db: Database.Database,
    /** the file, as given to open() */
    readonly path: string,
    opts: EventStoreOptions,
  ) {
    this.insert = db.prepare<InsertParams>(
      `INSERT INTO events (vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    );
    const insert = this.insert;
    const raiseRun = db.prepare<[string, string, number]>(
      'INSERT INTO runs (vm, agent_run, high_seq) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET high_seq = max(high_seq, excluded.high_seq)',
    );
    this.insertBatch = db.transaction((events: readonly VesperEvent[], ids: number[]) => {
      // The batch's highest seq per run: a batch nearly always holds one run, so one upsert.
      let runVm = '';
      let run: string | null = null;
      let high = 0;
      for (let i = 0; i < events.length; i++) {
        const e = events[i] as VesperEvent;
        const src = e.source;
        if (src !== null) {
          if (src.agentRun !== run || e.vm !== runVm) {
            if (run !== null) raiseRun.run(runVm, run, high);
            [runVm, run, high] = [e.vm, src.agentRun, 0];
          }
          if (src.seq > high) high = src.seq;
        }
        const r = insert.run(
          e.vm,
          e.plugin,
          e.instance,
          e.event,
          e.guestTimeUs,
          e.hostTimeUs,
          src === null ? null : src.agentRun,
          src === null ? null : src.seq,
          e.disposition ?? null,
          payloadJson(e.payload),
        );
        ids[i] = r.changes === 0 ? 0 : (r.lastInsertRowid as number);
      }
      if (run !== null) raiseRun.run(runVm, run, high);
    });
    this.highestSeqStmt = db.prepare<[string, string], number | null>('SELECT high_seq FROM runs WHERE vm = ? AND agent_run = ?').pluck();
    this.countSeqsStmt = db.prepare(
      `SELECT count(*) AS count, count(DISTINCT seq) AS "distinct", coalesce(min(seq), 0) AS min, coalesce(max(seq), 0) AS max
       FROM events WHERE vm = ? AND agent_run = ?`,
    );
    this.statsStmt = db.prepare('SELECT count(*) AS events, min(host_time_us) AS oldestUs, max(host_time_us) AS newestUs FROM events');
    this.vmStatsStmt = db.prepare(
      'SELECT count(*) AS events, min(host_time_us) AS oldestUs, max(host_time_us) AS newestUs FROM events WHERE vm = ?',
    );
    this.queries = new EventQueryRunner(db);
    this.pruner = new RetentionPruner(db, opts.retention ?? {});
    this.attachments = new AttachmentTable(db);
    this.filters = new FilterTable(db);
    this.meta = new MetaTable(db);
  }

  /**
   * Opens (creating if needed, with its directory) the store at `path`; ':memory:' for a
   * throw-away store. Throws VSP_STORE_FAILED if the file cannot be opened, is not a vesper
   * store, or was written by a newer schema version.
   */
  static open(path: string, opts: EventStoreOptions = {}): EventStore {
    checkOptions(path, opts);
    const inMemory = path === ':memory:';
    if (!inMemory) {
      try {
        mkdirSync(dirname(resolve(path)), { recursive: true, mode: DIRECTORY_MODE });
      } catch (err) {
        throw storeError(path, 'creating its directory', err);
      }
    }
    let db: Database.Database | undefined;
    try {
      db = new Database(path);
      // Schema first: auto_vacuum only takes on a file that has no pages yet (switching to WAL
      // writes one), and a file from a newer vesper is refused before anything is changed in it.
      migrate(db, path);
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (!inMemory && mode !== 'wal') throw new Error(`could not switch to WAL journal mode (got ${String(mode)})`);
      db.pragma(`synchronous = ${opts.sync === 'normal' ? 'NORMAL' : 'FULL'}`);
      return new EventStore(db, path, opts);
    } catch (err) {
      db?.close();
      throw storeError(path, 'opening', err);
    }
  }

  /** Stores new events in one transaction; a record already stored is counted, not stored again. */
  append(events: readonly VesperEvent[]): AppendResult {
    const ids = new Array<number>(events.length);
    try {
      this.insertBatch.immediate(events, ids);
    } catch (err) {
      throw storeError(this.path, `appending ${events.length} events`, err);
    }
    // ids are given out only now that the batch is committed: a rolled-back batch leaves the
    // caller's events untouched.
    const stored: VesperEvent[] = [];
    let duplicates = 0;
    for (let i = 0; i < events.length; i++) {
      const id = ids[i] as number;
      const e = events[i] as VesperEvent;
      if (id === 0) {
        duplicates++;
      } else {
        e.id = id;
        stored.push(e);
      }
    }
    return { stored, duplicates };
  }

  query(q: EventQuery = {}): VesperEvent[] {
    return this.guard('querying events', () => this.queries.run(q));
  }

  /** The highest seq stored for this agent run of this VM; 0 if none. */
  highestSeq(vm: string, agentRun: string): number {
    return this.guard('reading the highest seq', () => this.highestSeqStmt.get(vm, agentRun) ?? 0);
  }

  countSeqs(vm: string, agentRun: string): SeqCount {
    return this.guard('counting seqs', () => this.countSeqsStmt.get(vm, agentRun) as SeqCount);
  }

  /** Applies the retention given to open(); see retention.ts for the bounds of one call. */
  prune(nowUs: number = Date.now() * 1000): PruneResult {
    return this.guard('pruning', () => this.pruner.prune(nowUs));
  }

  stats(): StoreStats {
    return this.guard('reading stats', () => {
      const row = this.statsStmt.get() ?? { events: 0, oldestUs: null, newestUs: null };
      return { ...row, bytes: this.pruner.liveBytes() };
    });
  }

  /** Events stored for one VM (discarded ones included) and their host-time span. */
  vmStats(vm: string): VmStats {
    return this.guard('reading VM stats', () => this.vmStatsStmt.get(vm) ?? { events: 0, oldestUs: null, newestUs: null });
  }

  saveAttachment(vm: string, probe: string, spec: AttachmentSpec): void {
    this.guard('saving an attachment', () => this.attachments.save(vm, probe, spec));
  }

  /** true if there was one */
  removeAttachment(vm: string, probe: string): boolean {
    return this.guard('removing an attachment', () => this.attachments.delete(vm, probe));
  }

  listAttachments(vm?: string): Attachment[] {
    return this.guard('listing attachments', () => this.attachments.list(vm));
  }

  /** Adds the rule, or replaces the decision of the rule with the same key. */
  saveFilter(rule: FilterRule): void {
    this.guard('saving a filter', () => this.filters.save(rule));
  }

  /** true if there was one */
  deleteFilter(key: FilterKey): boolean {
    return this.guard('deleting a filter', () => this.filters.delete(key));
  }

  /** number of rules removed */
  clearFilters(): number {
    return this.guard('clearing filters', () => this.filters.clear());
  }

  /** in the order the rules were first saved */
  listFilters(): FilterRule[] {
    return this.guard('listing filters', () => this.filters.list());
  }

  getMeta(key: string): string | undefined {
    return this.guard('reading meta', () => this.meta.get(key));
  }

  setMeta(key: string, value: string): void {
    this.guard('writing meta', () => this.meta.set(key, value));
  }

  /** Closes the file; later calls fail with VSP_STORE_FAILED. Closing twice is harmless. */
  close(): void {
    if (!this.db.open) return;
    this.guard('closing', () => {
      // keeps the planner's statistics current for the next open; cheap when nothing changed
      try {
        this.db.pragma('optimize');
      } finally {
        this.db.close();
      }
    });
  }

  private guard<T>(doing: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw storeError(this.path, doing, err);
    }
  }
}
