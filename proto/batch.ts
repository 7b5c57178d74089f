// Builds a RecordBatch frame straight from records that are already encoded (the agent's
// ring keeps each record's bytes), so a record is encoded once however often it is sent.
// The bytes are exactly what v1.Frame.encode({ batch: { records } }) would produce.
import { crc32 } from 'node:zlib';
import { FRAME_MARKER, varintLength, writeVarint } from './frame.js';

const TAG_FRAME_BATCH = (10 << 3) | 2; // Frame.batch
const TAG_BATCH_RECORD = (1 << 3) | 2; // RecordBatch.records

export function encodeBatchFrame(records: readonly Uint8Array[]): Buffer {
  let batchLen = 0;
  for (const r of records) batchLen += 1 + varintLength(r.length) + r.length;
  const payloadLen = 1 + varintLength(batchLen) + batchLen;
  const headerLen = FRAME_MARKER.length + varintLength(payloadLen) + 4;
  const out = Buffer.allocUnsafe(headerLen + payloadLen);
  FRAME_MARKER.copy(out, 0);
  let pos = writeVarint(out, FRAME_MARKER.length, payloadLen);
  const crcAt = pos;
  pos += 4;
  const payloadAt = pos;
  out[pos++] = TAG_FRAME_BATCH;
  pos = writeVarint(out, pos, batchLen);
  for (const r of records) {
    out[pos++] = TAG_BATCH_RECORD;
    pos = writeVarint(out, pos, r.length);
    out.set(r, pos);
    pos += r.length;
  }
  out.writeUInt32LE(crc32(out.subarray(payloadAt, pos)), crcAt);
  return out;
}

/** where the last readVarint stopped (a module variable: no tuple per call on the ingest path) */
let varintNext = 0;

/** A varint of up to 35 bits at pos, or -1; sets varintNext to the byte after it. */
function readVarint(buf: Uint8Array, pos: number, end: number): number {
  let value = 0;
  for (let shift = 0; shift < 35 && pos < end; shift += 7) {
    const b = buf[pos++] as number;
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) {
      varintNext = pos;
      return value;
    }
  }
  return -1;
}

/** Whether a Frame payload starts with a batch (then splitBatchFrame may take it apart). */
export function isBatchFrame(payload: Uint8Array): boolean {
  return payload.length >= 2 && payload[0] === TAG_FRAME_BATCH;
}

/**
 * The reverse of encodeBatchFrame: the bytes of each record of a Frame payload that holds a
 * batch and nothing else, as views into `payload`, so that the manager can keep a record
 * exactly as the agent sent it without encoding it again. null when the payload is anything
 * else (another message, a batch with other fields, or malformed); the caller then decodes it
 * the ordinary way, which also reports what is wrong with it.
 */
export function splitBatchFrame(payload: Uint8Array): Uint8Array[] | null {
  if (payload.length < 2 || payload[0] !== TAG_FRAME_BATCH) return null;
  const len = readVarint(payload, 1, payload.length);
  if (len < 0 || varintNext + len !== payload.length) return null;
  const out: Uint8Array[] = [];
  let pos = varintNext;
  while (pos < payload.length) {
    if (payload[pos] !== TAG_BATCH_RECORD) return null;
    const n = readVarint(payload, pos + 1, payload.length);
    if (n < 0 || varintNext + n > payload.length) return null;
    out.push(payload.subarray(varintNext, varintNext + n));
    pos = varintNext + n;
  }
  return out;
}

/** Record.payload's oneof, by field number (vesper.proto, message Record). */
const RECORD_KINDS: Record<number, string> = {
  10: 'signal',
  11: 'oom',
  12: 'exec',
  13: 'exit',
  14: 'fork',
  15: 'psi',
  16: 'kprobe',
  17: 'heartbeat',
  18: 'loss',
  19: 'probeFault',
  20: 'generic',
  21: 'agentStopping',
};

export interface RecordHeader {
  seq: number;
  monoNs: number;
  wallNs: number;
  handle: number;
  eventId: number;
  /** the payload oneof's name ('signal', 'exit', ...); null when the record has none */
  kind: string | null;
}

/**
 * A record's header fields without decoding its payload (which is most of its bytes and every
 * object a full decode would allocate). 64-bit numbers come out exactly as protobufjs gives them
 * with Long disabled (low + high * 2^32). null for anything but a well-formed record with known
 * wire types: the caller then decodes it fully, which reports what is wrong.
 */
export function readRecordHeader(b: Uint8Array): RecordHeader | null {
  const h: RecordHeader = { seq: 0, monoNs: 0, wallNs: 0, handle: 0, eventId: 0, kind: null };
  const end = b.length;
  let pos = 0;
  while (pos < end) {
    const tag = readVarint(b, pos, end);
    if (tag < 0) return null;
    pos = varintNext;
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      // varint as two 32-bit halves
      let lo = 0;
      let hi = 0;
      let i = 0;
      let byte = 0;
      for (; i < 10; i++) {
        if (pos >= end) return null;
        byte = b[pos++] as number;
        if (i < 4) lo |= (byte & 0x7f) << (7 * i);
        else if (i === 4) {
          lo |= (byte & 0x0f) << 28;
          hi |= (byte & 0x7f) >>> 4;
        } else hi |= (byte & 0x7f) << (7 * i - 32);
        if ((byte & 0x80) === 0) break;
      }
      if (i === 10) return null;
      const value = (lo >>> 0) + (hi >>> 0) * 4294967296;
      // other varint fields (from a newer agent) are skipped, as a full decode skips them
      if (field === 1) h.seq = value;
      else if (field === 2) h.monoNs = value;
      else if (field === 3) h.wallNs = value;
      else if (field === 4) h.handle = lo >>> 0;
      else if (field === 5) h.eventId = lo >>> 0;
    } else if (wire === 2) {
      if (field <= 5) return null;
      const len = readVarint(b, pos, end);
      if (len < 0 || varintNext + len > end) return null;
      pos = varintNext + len;
      h.kind = RECORD_KINDS[field] ?? h.kind;
    } else if (wire === 1 && field > 5) pos += 8;
    else if (wire === 5 && field > 5) pos += 4;
    else return null;
  }
  return pos === end ? h : null;
}
