// Every failure of the store leaves through here, so the daemon sees one code (VSP_STORE_FAILED)
// and a message that names the database file: with several stores (tests, a CLI reading the
// daemon's file) "disk I/O error" alone does not say which one.

import { ErrorCode, VesperError } from '../../proto/errors.js';

/** Wraps anything thrown while `doing` something to the store at `path`; keeps a VesperError as is. */
export function storeError(path: string, doing: string, err: unknown): VesperError {
  if (err instanceof VesperError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const reason = typeof e?.message === 'string' ? e.message : String(err);
  // better-sqlite3 puts the SQLite result code (SQLITE_BUSY, SQLITE_CORRUPT...) in `code`.
  const sqliteCode = typeof e?.code === 'string' ? e.code : '';
  return new VesperError(ErrorCode.STORE_FAILED, `event store ${path}: ${doing}: ${reason}`, sqliteCode, { cause: err });
}
