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
  SavedFilterTable,
  MetaTable,
  type Attachment,
  type AttachmentSpec,
  type SavedFilterKey,
  type SavedFilterRule,
} from './daemon-state.js';
import { EventQueryRunner, type EventQuery } from './event-query.js';
import { payloadColumn } from './event-row.js';
import { RetentionPruner, type PruneResult, type Retention } from './retention.js';
import { INDEXED_THROUGH_KEY, migrate } from './schema.js';
import { SinkCursorTable } from './sink-cursors.js';
import { VmIndex } from './vm-index.js';
import { storeError } from './store-error.js';

export type { Attachment, AttachmentSpec, SavedFilterKey, SavedFilterRule } from './daemon-state.js';
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
  /** the by-VM index takes the newest rows at least this often (default INDEX_EVERY_MS) */
  indexEveryMs?: number;
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

/** rows per multi-row INSERT: one call into SQLite for this many events */
const INSERT_ROWS = 32;
const COLUMNS_PER_ROW = 10;
/** the by-VM index is brought up to date when this many rows wait for it... */
const INDEX_EVERY_ROWS = 65_536;
/** ...or when the oldest has waited this long */
export const INDEX_EVERY_MS = 1000;

const DIRECTORY_MODE = 0o750;

/** An agent run's highest stored seq; dirty until an index pass has saved it in `runs`. */
interface RunHigh {
  seq: number;
  dirty: boolean;
}

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
  if (r.vmShare !== undefined && !(Number.isFinite(r.vmShare) && r.vmShare > 0 && r.vmShare <= 1))
    bad(`retention.vmShare must be above 0 and at most 1, not ${String(r.vmShare)}`);
  if (opts.indexEveryMs !== undefined && !(Number.isFinite(opts.indexEveryMs) && opts.indexEveryMs > 0))
    bad(`indexEveryMs must be a positive number, not ${String(opts.indexEveryMs)}`);
}

export class EventStore {
  private readonly insertOne: Database.Statement<unknown[]>;
  private readonly insertMany: Database.Statement<unknown[]>;
  private readonly insertBatch: Database.Transaction<(events: readonly VesperEvent[], firstId: number) => void>;
  private readonly indexPass: Database.Transaction<(through: number) => void>;
  private readonly vmIndex: VmIndex;
  private readonly runHighStmt: Database.Statement<[string, string], number | null>;
  private readonly tailHighStmt: Database.Statement<[number, string, string], number | null>;
  private readonly countSeqsStmt: Database.Statement<[string, string], SeqCount>;
  private readonly statsStmt: Database.Statement<[], VmStats>;
  private readonly hostTimeOfStmt: Database.Statement<[number], number>;
  private readonly oldestIdStmt: Database.Statement<[], number | null>;
  private readonly vmTailStatsStmt: Database.Statement<[number, string], VmStats>;
  private readonly queries: EventQueryRunner;
  private readonly pruner: RetentionPruner;
  private readonly attachments: AttachmentTable;
  private readonly filters: SavedFilterTable;
  private readonly meta: MetaTable;
  /** the export sinks' cursors and outbox reads (host/export/) */
  readonly sinks: SinkCursorTable;
  /** the next event's id: ids are given here, so a batch's ids are known before its commit */
  private nextId: number;
  /** host time of the newest event: later events never get an earlier one */
  private lastHostUs: number;
  /** every event up to this id is in vm_ids and runs */
  private indexedThrough: number;
  private indexedAtMs = Date.now();
  private readonly indexEveryMs: number;
  private readonly retention: Retention;
  /** highest seq stored per VM and agent run, as far as it was asked or written */
  private readonly highs = new Map<string, Map<string, RunHigh>>();

  private constructor(
    private readonly db: Database.Database,
    /** the file, as given to open() */
    readonly path: string,
    opts: EventStoreOptions,
  ) {
    const insertSql = (rows: number): string =>
      `INSERT INTO events (id, vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload) VALUES ` +
      Array.from({ length: rows }, () => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ');
    this.insertOne = db.prepare(insertSql(1));
    this.insertMany = db.prepare(insertSql(INSERT_ROWS));
    const [one, many] = [this.insertOne, this.insertMany];
    this.insertBatch = db.transaction((events: readonly VesperEvent[], firstId: number) => {
      const n = events.length;
      const row = new Array<unknown>((COLUMNS_PER_ROW + 1) * INSERT_ROWS);
      let i = 0;
      const put = (e: VesperEvent, at: number): void => {
        const src = e.source;
        row[at] = firstId + i;
        row[at + 1] = e.vm;
        row[at + 2] = e.plugin;
        row[at + 3] = e.instance;
        row[at + 4] = e.event;
        row[at + 5] = e.guestTimeUs;
        row[at + 6] = e.hostTimeUs;
        row[at + 7] = src === null ? null : src.agentRun;
        row[at + 8] = src === null ? null : src.seq;
        row[at + 9] = e.disposition ?? null;
        row[at + 10] = payloadColumn(e);
      };
      while (n - i >= INSERT_ROWS) {
        for (let k = 0; k < INSERT_ROWS; k++, i++) put(events[i] as VesperEvent, k * (COLUMNS_PER_ROW + 1));
        many.run(row);
      }
      const single = new Array<unknown>(COLUMNS_PER_ROW + 1);
      for (; i < n; i++) {
        const e = events[i] as VesperEvent;
        const src = e.source;
        single[0] = firstId + i;
        single[1] = e.vm;
        single[2] = e.plugin;
        single[3] = e.instance;
        single[4] = e.event;
        single[5] = e.guestTimeUs;
        single[6] = e.hostTimeUs;
        single[7] = src === null ? null : src.agentRun;
        single[8] = src === null ? null : src.seq;
        single[9] = e.disposition ?? null;
        single[10] = payloadColumn(e);
        one.run(single);
      }
    });
    this.vmIndex = new VmIndex(db);
    const vmIndex = this.vmIndex;
    const raiseRun = db.prepare<[string, string, number]>(
      'INSERT INTO runs (vm, agent_run, high_seq) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET high_seq = max(high_seq, excluded.high_seq)',
    );
    const setIndexed = db.prepare<[string]>(
      `INSERT INTO meta (key, value) VALUES ('${INDEXED_THROUGH_KEY}', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
    );
    this.indexPass = db.transaction((through: number) => {
      vmIndex.write();
      for (const [vm, runs] of this.highs) for (const [run, high] of runs) if (high.dirty) raiseRun.run(vm, run, high.seq);
      setIndexed.run(String(through));
    });
    this.runHighStmt = db.prepare<[string, string], number | null>('SELECT high_seq FROM runs WHERE vm = ? AND agent_run = ?').pluck();
    this.tailHighStmt = db
      .prepare<[number, string, string], number | null>('SELECT max(seq) FROM events WHERE id > ? AND vm = ? AND agent_run = ?')
      .pluck();
    this.countSeqsStmt = db.prepare(
      `SELECT count(*) AS count, count(DISTINCT seq) AS "distinct", coalesce(min(seq), 0) AS min, coalesce(max(seq), 0) AS max
       FROM events WHERE vm = ? AND agent_run = ?`,
    );
    // Host time never decreases along ids: the oldest and newest times are those of the end rows.
    this.statsStmt = db.prepare(
      `SELECT count(*) AS events,
         (SELECT host_time_us FROM events ORDER BY id LIMIT 1) AS oldestUs,
         (SELECT host_time_us FROM events ORDER BY id DESC LIMIT 1) AS newestUs
       FROM events`,
    );
    this.hostTimeOfStmt = db.prepare<[number], number>('SELECT host_time_us FROM events WHERE id = ?').pluck();
    this.oldestIdStmt = db.prepare<[], number | null>('SELECT min(id) FROM events').pluck();
    this.vmTailStatsStmt = db.prepare(
      'SELECT count(*) AS events, min(host_time_us) AS oldestUs, max(host_time_us) AS newestUs FROM events WHERE id > ? AND vm = ?',
    );
    this.queries = new EventQueryRunner(db);
    this.retention = opts.retention ?? {};
    this.pruner = new RetentionPruner(db, this.retention);
    this.attachments = new AttachmentTable(db);
    this.filters = new SavedFilterTable(db);
    this.meta = new MetaTable(db);
    this.sinks = new SinkCursorTable(db);
    this.indexEveryMs = opts.indexEveryMs ?? INDEX_EVERY_MS;
    this.nextId = this.idAfterLast();
    this.lastHostUs = (db.prepare('SELECT host_time_us FROM events ORDER BY id DESC LIMIT 1').pluck().get() as number | undefined) ?? 0;
    this.indexedThrough = Number(this.meta.get(INDEXED_THROUGH_KEY) ?? 0);
    // Rows a killed writer left unindexed: their runs come from the rows themselves (this
    // process has not seen them), then the pass indexes them.
    db.prepare<[number]>(
      `INSERT INTO runs (vm, agent_run, high_seq)
       SELECT vm, agent_run, max(seq) FROM events WHERE id > ? AND agent_run IS NOT NULL GROUP BY vm, agent_run
       ON CONFLICT DO UPDATE SET high_seq = max(high_seq, excluded.high_seq)`,
    ).run(this.indexedThrough);
    for (const row of db
      .prepare<[number], { id: number; vm: string }>('SELECT id, vm FROM events WHERE id > ? ORDER BY id')
      .iterate(this.indexedThrough))
      this.vmIndex.note(row.vm, row.id);
    this.indexTail();
  }

  /** AUTOINCREMENT keeps the largest id ever given (in sqlite_sequence), even once deleted. */
  private idAfterLast(): number {
    const seq = this.db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'events'").pluck().get() as number | undefined;
    const max = this.db.prepare('SELECT max(id) FROM events').pluck().get() as number | null;
    return Math.max(seq ?? 0, max ?? 0) + 1;
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

  /**
   * Stores new events in one transaction; a record already stored is counted, not stored again.
   * Records of one agent run come in sequence order (the agent sends them so, and resends from
   * what the store said it holds), so one at or below the run's highest stored seq is a resend.
   * Host times never go backwards along ids: an event is given at least the host time of the
   * one before it.
   */
  append(events: readonly VesperEvent[]): AppendResult {
    const fresh: VesperEvent[] = [];
    // A run's remembered high is raised as its records are taken, and put back if the batch does
    // not commit: (entry, seq before, dirty before) for every raise. With a thousand guests the
    // events of a batch alternate between VMs, so what costs per event is map look-ups: two here.
    const undo: (RunHigh | number | boolean)[] = [];
    let duplicates = 0;
    let lastHostUs = this.lastHostUs;
    let vm: string | null = null;
    let runs: Map<string, RunHigh> | null = null;
    try {
      for (let i = 0; i < events.length; i++) {
        const e = events[i] as VesperEvent;
        const src = e.source;
        if (src !== null) {
          if (e.vm !== vm || runs === null) {
            vm = e.vm;
            runs = this.runsOf(vm);
          }
          const high = runs.get(src.agentRun) ?? this.loadHigh(vm, src.agentRun, runs);
          if (src.seq <= high.seq) {
            duplicates++;
            continue;
          }
          undo.push(high, high.seq, high.dirty);
          high.seq = src.seq;
          high.dirty = true;
        }
        if (e.hostTimeUs < lastHostUs) e.hostTimeUs = lastHostUs;
        else lastHostUs = e.hostTimeUs;
        fresh.push(e);
      }
      if (fresh.length > 0) this.insertBatch.immediate(fresh, this.nextId);
    } catch (err) {
      // not committed: the caller's events and the store's memory are as they were
      for (let k = undo.length - 3; k >= 0; k -= 3) {
        const h = undo[k] as RunHigh;
        h.seq = undo[k + 1] as number;
        h.dirty = undo[k + 2] as boolean;
      }
      throw storeError(this.path, `appending ${events.length} events`, err);
    }
    // ids change only now that the batch is committed
    for (let i = 0; i < fresh.length; i++) {
      const e = fresh[i] as VesperEvent;
      e.id = this.nextId + i;
      this.vmIndex.note(e.vm, e.id);
    }
    this.nextId += fresh.length;
    this.lastHostUs = lastHostUs;
    if (this.nextId - 1 - this.indexedThrough >= INDEX_EVERY_ROWS || Date.now() - this.indexedAtMs >= this.indexEveryMs) {
      this.indexTail();
    }
    return { stored: fresh, duplicates };
  }

  /**
   * Brings vm_ids and runs up to the newest row. Failing here loses nothing: the rows
   * stay in the unindexed tail, which queries scan, and the next pass takes them.
   */
  private indexTail(): void {
    this.indexedAtMs = Date.now();
    const through = this.nextId - 1;
    if (through <= this.indexedThrough) return;
    try {
      this.indexPass.immediate(through);
      this.indexedThrough = through;
      for (const runs of this.highs.values()) for (const high of runs.values()) high.dirty = false;
      this.vmIndex.clearPending();
    } catch {
      // kept in the tail; see above
    }
  }

  /** The highest seq stored for a run: remembered, or the runs table and the unindexed tail. */
  private knownHigh(vm: string, agentRun: string): number {
    const runs = this.runsOf(vm);
    return (runs.get(agentRun) ?? this.loadHigh(vm, agentRun, runs)).seq;
  }

  /** A run not remembered yet: its high from the runs table and the unindexed tail, remembered. */
  private loadHigh(vm: string, agentRun: string, runs: Map<string, RunHigh>): RunHigh {
    const seq = Math.max(this.runHighStmt.get(vm, agentRun) ?? 0, this.tailHighStmt.get(this.indexedThrough, vm, agentRun) ?? 0);
    const high: RunHigh = { seq, dirty: false };
    runs.set(agentRun, high);
    return high;
  }

  private runsOf(vm: string): Map<string, RunHigh> {
    let runs = this.highs.get(vm);
    if (runs === undefined) this.highs.set(vm, (runs = new Map<string, RunHigh>()));
    return runs;
  }

  query(q: EventQuery = {}): VesperEvent[] {
    return this.guard('querying events', () => this.queries.run(q, this.vmIndex, this.indexedThrough));
  }

  /** The highest seq stored for this agent run of this VM; 0 if none. */
  highestSeq(vm: string, agentRun: string): number {
    return this.guard('reading the highest seq', () => this.knownHigh(vm, agentRun));
  }

  /** Counts one run's stored rows: a scan of the whole table, for tests and diagnostics. */
  countSeqs(vm: string, agentRun: string): SeqCount {
    return this.guard('counting seqs', () => this.countSeqsStmt.get(vm, agentRun) as SeqCount);
  }

  /** Applies the retention given to open(); see retention.ts for the bounds of one call. */
  /**
   * `holdFrom`: age retention deletes no event at or after this id (the oldest one an export
   * sink has not delivered yet); size retention, the hard limit, still may (the exporter counts
   * such events as lost).
   */
  prune(nowUs: number = Date.now() * 1000, holdFrom?: number): PruneResult {
    // the newest rows into vm_ids first: size retention finds each VM's events there
    if (this.retention.maxBytes !== undefined && (this.retention.vmShare ?? 1) < 1) this.indexTail();
    return this.guard('pruning', () => this.pruner.prune(nowUs, this.nextId, this.vmIndex, holdFrom));
  }

  /** The id of the newest event stored (0 when none ever was). */
  lastId(): number {
    return this.nextId - 1;
  }

  /** The store's sink table, through the store's error wrapping. */
  sinkOp<T>(doing: string, fn: (t: SinkCursorTable) => T): T {
    return this.guard(doing, () => fn(this.sinks));
  }

  /**
   * An online, consistent copy of the whole file at `dest` (SQLite's backup API). Writes made by
   * this connection while it runs are carried into the copy, so it holds at least every event
   * committed before the call. Runs in steps between which the event loop goes on.
   */
  async backup(dest: string): Promise<{ totalPages: number }> {
    try {
      const r = await this.db.backup(dest, { progress: () => 2048 });
      return { totalPages: r.totalPages };
    } catch (err) {
      throw storeError(this.path, `backing up to ${dest}`, err);
    }
  }

  stats(): StoreStats {
    return this.guard('reading stats', () => {
      const row = this.statsStmt.get() ?? { events: 0, oldestUs: null, newestUs: null };
      return { ...row, bytes: this.pruner.liveBytes() };
    });
  }

  /** Events stored for one VM (discarded ones included) and their host-time span. */
  vmStats(vm: string): VmStats {
    return this.guard('reading VM stats', () => {
      const all: VmStats = { events: 0, oldestUs: null, newestUs: null };
      const add = (s: VmStats | undefined): void => {
        if (s === undefined || s.events === 0) return;
        all.events += s.events;
        if (all.oldestUs === null || (s.oldestUs !== null && s.oldestUs < all.oldestUs)) all.oldestUs = s.oldestUs;
        if (all.newestUs === null || (s.newestUs !== null && s.newestUs > all.newestUs)) all.newestUs = s.newestUs;
      };
      // Retention deletes the oldest events first, or a VM's own oldest along with their vm_ids
      // entries, so an indexed id at or above the oldest event left is an event.
      const oldest = this.oldestIdStmt.get() ?? null;
      if (oldest !== null) {
        let count = 0;
        let first = 0;
        let last = 0;
        for (const ids of this.vmIndex.idsOf(vm, oldest - 1, this.indexedThrough + 1, false)) {
          count += ids.length;
          if (first === 0) first = ids[0] as number;
          last = ids[ids.length - 1] as number;
        }
        if (count > 0)
          add({ events: count, oldestUs: this.hostTimeOfStmt.get(first) ?? null, newestUs: this.hostTimeOfStmt.get(last) ?? null });
      }
      add(this.vmTailStatsStmt.get(this.indexedThrough, vm));
      return all;
    });
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
  saveFilter(rule: SavedFilterRule): void {
    this.guard('saving a filter', () => this.filters.save(rule));
  }

  /** true if there was one */
  deleteFilter(key: SavedFilterKey): boolean {
    return this.guard('deleting a filter', () => this.filters.delete(key));
  }

  /** number of rules removed */
  clearFilters(): number {
    return this.guard('clearing filters', () => this.filters.clear());
  }

  /** in the order the rules were first saved */
  listFilters(): SavedFilterRule[] {
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
        this.indexTail();
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
