// The store's by-VM index. A row of vm_ids holds, for one VM and one bucket of 2^16 ids, the
// VM's event ids in that bucket: ascending, each as a 16-bit little-endian offset from the
// bucket's first id. A pass writes the ids appended since the last one, one row per VM and
// bucket, instead of one index entry per event: with a thousand guests sending at once, an
// entry per event cost the manager about a microsecond of every event's budget (measured), a
// row per VM and pass a few microseconds per pass.
//
// Ids appended after the last pass are not in vm_ids yet; readers scan those rows (the tail,
// a fraction of a second of events) by their vm column.

import type Database from 'better-sqlite3';

export const VM_BUCKET_SHIFT = 16;
const BUCKET_IDS = 2 ** VM_BUCKET_SHIFT;

/** The bucket of an id (SQL: id >> VM_BUCKET_SHIFT; ids outgrow JS's 32-bit shifts). */
export function bucketOf(id: number): number {
  return Math.floor(id / BUCKET_IDS);
}

export const VM_INDEX_SCHEMA = `
CREATE TABLE vm_ids (
  vm TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  ids BLOB NOT NULL,
  UNIQUE (vm, bucket)
);
CREATE INDEX vm_ids_by_bucket ON vm_ids (bucket);
`;

function encode(bucket: number, ids: readonly number[]): Buffer {
  const out = Buffer.allocUnsafe(ids.length * 2);
  const base = bucket * BUCKET_IDS;
  for (let i = 0; i < ids.length; i++) out.writeUInt16LE((ids[i] as number) - base, i * 2);
  return out;
}

/** The ids of a row, ascending. */
export function decodeIds(bucket: number, blob: Uint8Array): number[] {
  const base = bucket * BUCKET_IDS;
  const out = new Array<number>(blob.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = base + ((blob[2 * i] as number) | ((blob[2 * i + 1] as number) << 8));
  return out;
}

export class VmIndex {
  /** per VM, ids appended since the last pass, ascending */
  private pending = new Map<string, number[]>();
  private lastVm: string | null = null;
  private lastIds: number[] = [];
  private readonly rowStmt: Database.Statement<[string, number], Buffer>;
  private readonly upsertStmt: Database.Statement<[string, number, Buffer]>;
  private readonly rowsAscStmt: Database.Statement<[string, number, number], { bucket: number; ids: Buffer }>;
  private readonly rowsDescStmt: Database.Statement<[string, number, number], { bucket: number; ids: Buffer }>;
  private readonly dropStmt: Database.Statement<[number]>;
  private readonly sizesStmt: Database.Statement<[number], { vm: string; n: number }>;
  private readonly bucketRowsStmt: Database.Statement<[number], { vm: string; ids: Buffer }>;
  private readonly dropVmBelowStmt: Database.Statement<[string, number]>;
  private readonly deleteRowStmt: Database.Statement<[string, number]>;

  constructor(db: Database.Database) {
    this.rowStmt = db.prepare<[string, number], Buffer>('SELECT ids FROM vm_ids WHERE vm = ? AND bucket = ?').pluck();
    this.upsertStmt = db.prepare(
      'INSERT INTO vm_ids (vm, bucket, ids) VALUES (?, ?, ?) ON CONFLICT (vm, bucket) DO UPDATE SET ids = excluded.ids',
    );
    const rows = (dir: string): string =>
      `SELECT bucket, ids FROM vm_ids WHERE vm = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket ${dir}`;
    this.rowsAscStmt = db.prepare(rows('ASC'));
    this.rowsDescStmt = db.prepare(rows('DESC'));
    this.dropStmt = db.prepare('DELETE FROM vm_ids WHERE bucket < ?');
    // length() of a blob is read from the record's header, without loading the blob
    this.sizesStmt = db.prepare('SELECT vm, sum(length(ids)) / 2 AS n FROM vm_ids WHERE bucket > ? GROUP BY vm');
    this.bucketRowsStmt = db.prepare('SELECT vm, ids FROM vm_ids WHERE bucket = ?');
    this.dropVmBelowStmt = db.prepare('DELETE FROM vm_ids WHERE vm = ? AND bucket < ?');
    this.deleteRowStmt = db.prepare('DELETE FROM vm_ids WHERE vm = ? AND bucket = ?');
  }

  /**
   * Indexed events per VM, counting only ids at or above `oldestId` (the oldest event left: the
   * bucket it is in may still hold entries of events deleted before it). One row per VM and
   * bucket is read, and only the oldest bucket's ids are decoded.
   */
  counts(oldestId: number): Map<string, number> {
    const first = bucketOf(oldestId);
    const out = new Map<string, number>();
    for (const r of this.sizesStmt.iterate(first)) out.set(r.vm, r.n);
    for (const r of this.bucketRowsStmt.iterate(first)) {
      const n = decodeIds(first, r.ids).filter((id) => id >= oldestId).length;
      if (n > 0) out.set(r.vm, (out.get(r.vm) ?? 0) + n);
    }
    return out;
  }

  /** The VM's `n` oldest indexed ids at or above `fromId`, ascending. */
  oldest(vm: string, fromId: number, n: number): number[] {
    const out: number[] = [];
    for (const ids of this.idsOf(vm, fromId - 1, Number.MAX_SAFE_INTEGER, false)) {
      for (const id of ids) {
        if (out.length >= n) return out;
        out.push(id);
      }
    }
    return out;
  }

  /** Forgets the VM's ids up to `id` (retention deleted its events up to there); in the caller's transaction. */
  dropVmThrough(vm: string, id: number): void {
    const bucket = bucketOf(id);
    this.dropVmBelowStmt.run(vm, bucket);
    const had = this.rowStmt.get(vm, bucket);
    if (had === undefined) return;
    const left = decodeIds(bucket, had).filter((x) => x > id);
    if (left.length === 0) this.deleteRowStmt.run(vm, bucket);
    else this.upsertStmt.run(vm, bucket, encode(bucket, left));
  }

  /** An appended (committed) event; ids come in ascending order. */
  note(vm: string, id: number): void {
    if (vm !== this.lastVm) {
      let ids = this.pending.get(vm);
      if (ids === undefined) this.pending.set(vm, (ids = []));
      this.lastVm = vm;
      this.lastIds = ids;
    }
    this.lastIds.push(id);
  }

  get hasPending(): boolean {
    return this.pending.size > 0;
  }

  /** Writes what was noted into vm_ids; inside the caller's transaction. Keeps it noted. */
  write(): void {
    for (const [vm, ids] of this.pending) {
      for (let from = 0; from < ids.length;) {
        const bucket = bucketOf(ids[from] as number);
        let to = from + 1;
        while (to < ids.length && bucketOf(ids[to] as number) === bucket) to++;
        const added = encode(bucket, ids.slice(from, to));
        const had = this.rowStmt.get(vm, bucket);
        this.upsertStmt.run(vm, bucket, had === undefined ? added : Buffer.concat([had, added]));
        from = to;
      }
    }
  }

  /** After the transaction that wrote them committed. */
  clearPending(): void {
    this.pending = new Map();
    this.lastVm = null;
    this.lastIds = [];
  }

  /**
   * The VM's ids in (lo, hi), bucket row by bucket row, each ascending or descending. Rows are
   * read one at a time, so a caller that has enough stops early.
   */
  *idsOf(vm: string, lo: number, hi: number, desc: boolean): Generator<number[]> {
    if (lo + 1 >= hi) return;
    const stmt = desc ? this.rowsDescStmt : this.rowsAscStmt;
    for (const row of stmt.iterate(vm, bucketOf(lo + 1), bucketOf(hi - 1))) {
      const ids = decodeIds(row.bucket, row.ids).filter((id) => id > lo && id < hi);
      if (desc) ids.reverse();
      if (ids.length > 0) yield ids;
    }
  }

  /** Forgets buckets wholly below the oldest event left (retention deleted their events). */
  dropBelow(oldestId: number): void {
    this.dropStmt.run(bucketOf(oldestId));
  }
}
