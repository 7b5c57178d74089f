// Strings a guest sends are capped at what their kernel meaning allows: a task's comm is at most
// 15 bytes (TASK_COMM_LEN - 1), a path (cgroup, executable, pressure file) at most PATH_MAX, a
// kernel symbol KSYM_NAME_LEN, the agent's own codes and names a few dozen. A guest that sends
// more is lying or broken; what it sent past the cap is not stored in full nor printed, so no row
// of the store and no line of `vesper events` or `vesper analyze` grows with it.
//
// Two places: at ingest only a record larger than any honest one (MAX_HONEST_RECORD_BYTES, one
// length comparison per record) is decoded, capped and encoded again; when a payload is read
// (events, analysis) every string is capped, so a record under that size with a 200-byte comm
// still prints 15 bytes.
import { v1, type pb } from '../../proto/codec.js';

const PATH_MAX = 4096;
/** the longest of each string field of a record, in UTF-8 bytes (by protobufjs field name) */
export const GUEST_STRING_CAPS: Readonly<Record<string, number>> = {
  comm: 15, // TASK_COMM_LEN - 1
  memcg: PATH_MAX,
  taskMemcg: PATH_MAX,
  constraint: 32, // CONSTRAINT_NONE, CONSTRAINT_MEMCG, ...
  filename: PATH_MAX,
  resource: 16, // memory, io, cpu
  kind: 16, // some, full
  source: PATH_MAX,
  name: 512, // a kprobe's event or field name (KSYM_NAME_LEN)
  symbol: 512, // KSYM_NAME_LEN
  str: PATH_MAX, // a kprobe's string argument
  probe: 64, // a probe name (MAX_PROBE_NAME)
  code: 64, // a VSP_* code
  message: 1024,
};
/** a string field not named above */
export const DEFAULT_GUEST_STRING_CAP = PATH_MAX;
/**
 * No record whose strings are within their caps is this large (an OOM record with two cgroup
 * paths and an executable's of PATH_MAX each is about 12.5 KiB); a larger one is capped at ingest.
 */
export const MAX_HONEST_RECORD_BYTES = 16 * 1024;

/** `s` cut to at most `max` UTF-8 bytes, on a character boundary. */
export function capUtf8(s: string, max: number): string {
  if (s.length <= max / 3) return s; // at most 3 bytes a UTF-16 unit: surely within
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return s;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // not inside a character
  return b.subarray(0, end).toString('utf8');
}

export function capOf(field: string): number {
  return GUEST_STRING_CAPS[field] ?? DEFAULT_GUEST_STRING_CAP;
}

/** Caps every string of a decoded message in place; returns how many were cut. */
export function capStrings(msg: unknown): number {
  if (msg === null || typeof msg !== 'object' || msg instanceof Uint8Array) return 0;
  let cut = 0;
  if (Array.isArray(msg)) {
    for (const m of msg) cut += capStrings(m);
    return cut;
  }
  const o = msg as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    const v = o[k];
    if (typeof v === 'string') {
      const c = capUtf8(v, capOf(k));
      if (c !== v) {
        o[k] = c;
        cut++;
      }
    } else if (v !== null && typeof v === 'object') cut += capStrings(v);
  }
  return cut;
}

/**
 * A record's bytes with its strings capped, when it is larger than an honest record can be and
 * something was cut; null when it stays as it is (nearly always: one comparison).
 */
export function capOversizedRecord(bytes: Uint8Array): { bytes: Uint8Array; decoded: pb.Record; cut: number } | null {
  if (bytes.length <= MAX_HONEST_RECORD_BYTES) return null;
  let raw: pb.Record;
  try {
    raw = v1.Record.decode(bytes);
  } catch {
    return null; // undecodable: stored as it came, told as undecodable when read
  }
  const cut = capStrings(raw);
  if (cut === 0) return null;
  return { bytes: v1.Record.encode(raw).finish(), decoded: raw, cut };
}
