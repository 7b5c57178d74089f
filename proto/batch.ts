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
