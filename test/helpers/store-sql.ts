// Reading a vesper event store with plain SQL in tests and benchmarks. Guest records are kept as
// their protobuf bytes; payload_json(payload) gives any row's payload as JSON text, so that
// json_extract works on every row.
import Database from 'better-sqlite3';
import { payloadFromColumn } from '../../host/store/event-row.js';

export function openStoreForSql(path: string): Database.Database {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  db.function('payload_json', { deterministic: true }, (col: unknown) =>
    typeof col === 'string' || col instanceof Uint8Array ? JSON.stringify(payloadFromColumn(col)) : null,
  );
  return db;
}
