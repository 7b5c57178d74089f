// The ingest path reads a record's header without decoding its payload; it must agree with
// protobufjs's full decode on every field it reads, and refuse what it does not understand.
import { describe, expect, it } from 'vitest';
import { encodeBatchFrame, readRecordHeader, splitBatchFrame } from '../../proto/batch.js';
import { encodeMessage, v1, type pb } from '../../proto/codec.js';

function rnd(max: number): number {
  return Math.floor(Math.random() * max);
}

const PAYLOADS: Array<Partial<pb.IRecord>> = [
  { signal: { sig: 11, code: 1, target: { pid: 4242, comm: 'crasher' }, sender: { pid: 1, comm: 'init' }, senderIsKernel: true } },
  { exit: { task: { pid: 7, comm: 'x' }, exitCode: 3, codeKnown: true, filename: '/bin/false' } },
  { loss: { count: 12 } },
  { heartbeat: {} },
  {},
];

describe('readRecordHeader', () => {
  it('reads what a full decode reads, for random records including 64-bit values and zero fields', () => {
    for (let i = 0; i < 2000; i++) {
      const rec: pb.IRecord = {
        seq: i % 7 === 0 ? 0 : rnd(2 ** 53),
        monoNs: i % 5 === 0 ? 0 : rnd(2 ** 50),
        // wall clock nanoseconds are above 2^53: both sides must round them alike
        wallNs: i % 3 === 0 ? 1.7e18 + rnd(1e15) : rnd(2 ** 32),
        handle: i % 4 === 0 ? 0 : rnd(2 ** 32),
        eventId: rnd(300),
        ...PAYLOADS[i % PAYLOADS.length],
      };
      const bytes = v1.Record.encode(rec).finish();
      const full = v1.Record.decode(bytes);
      expect(readRecordHeader(bytes)).toEqual({
        seq: full.seq,
        monoNs: full.monoNs,
        wallNs: full.wallNs,
        handle: full.handle,
        eventId: full.eventId,
        kind: full.payload ?? null,
      });
    }
  });

  it('refuses truncated records and unknown wire types, so that the full decode reports them', () => {
    const bytes = v1.Record.encode({ seq: 300, monoNs: 5, signal: { sig: 9 } }).finish();
    for (let cut = 1; cut < bytes.length; cut++) {
      const head = readRecordHeader(bytes.subarray(0, cut));
      if (head !== null) expect(() => v1.Record.decode(bytes.subarray(0, cut))).not.toThrow();
    }
    expect(readRecordHeader(Uint8Array.from([0x0b]))).toBeNull(); // field 1, wire type 3 (group)
  });
});

describe('splitBatchFrame', () => {
  it('gives back the records of a batch frame, and null for any other message', () => {
    const recs = [1, 2, 3].map((seq) => v1.Record.encode({ seq, handle: 1, eventId: 1, heartbeat: {} }).finish());
    const frame = encodeBatchFrame(recs);
    const payload = v1.Frame.encode({ batch: { records: recs.map((r) => v1.Record.decode(r)) } }).finish();
    const parts = splitBatchFrame(payload);
    expect(parts?.map((p) => Buffer.from(p).toString('hex'))).toEqual(recs.map((r) => Buffer.from(r).toString('hex')));
    expect(frame.length).toBeGreaterThan(payload.length);
    expect(splitBatchFrame(encodeMessage({ ping: { nonce: 1 } }))).toBeNull();
    expect(splitBatchFrame(payload.subarray(0, payload.length - 1))).toBeNull();
  });
});
