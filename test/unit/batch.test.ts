import { describe, expect, it } from 'vitest';
import { encodeBatchFrame } from '../../proto/batch.js';
import { decodeMessage, encodeMessage, v1, type pb, type vesper } from '../../proto/codec.js';
import { encodeFrame, FrameDecoder } from '../../proto/frame.js';
import { mulberry32 } from './prng.js';

function encodeRecord(r: pb.IRecord): Uint8Array {
  return v1.Record.encode(r).finish();
}

/** What encodeBatchFrame promises to equal: the generic encoder on the decoded records. */
function reference(records: Uint8Array[]): Buffer {
  const decoded = records.map((r) => v1.Record.decode(r));
  return encodeFrame(encodeMessage({ batch: { records: decoded } }));
}

function decodeAll(bytes: Buffer): pb.Frame[] {
  const out: pb.Frame[] = [];
  const dec = new FrameDecoder({
    maxFrameBytes: 1 << 22,
    onFrame: (p) => out.push(decodeMessage(p)),
    onError: (e) => {
      throw e;
    },
  });
  dec.push(bytes);
  expect(dec.pendingBytes).toBe(0);
  return out;
}

const sample: pb.IRecord[] = [
  {
    seq: 1,
    monoNs: 1_000_000_123,
    wallNs: 1_752_000_000_000_000_000,
    handle: 3,
    eventId: 1,
    heartbeat: { count: 42, intervalMs: 1000, delayMs: 1.5 },
  },
  {
    seq: 2,
    monoNs: 2_000_000_000,
    handle: 4,
    eventId: 1,
    signal: { sig: 11, code: 1, errno: 0, result: 0, group: false, target: { pid: 4321, comm: 'crasher' }, senderIsKernel: true },
  },
  {
    seq: 3,
    monoNs: 3,
    handle: 0,
    eventId: 0,
    loss: { source: v1.LossEvent.Source.AGENT_RING, count: 17, firstMonoNs: 10, lastMonoNs: 20 },
  },
  { seq: 4, handle: 5, eventId: 2, exec: { task: { pid: 99, comm: 'true' }, filename: '/usr/bin/true', oldPid: 98 } },
  {
    seq: 2 ** 40 + 7,
    monoNs: 2 ** 52,
    kprobe: {
      name: 'k',
      symbol: 'do_exit',
      fields: [
        { name: 'a', int: -5 },
        { name: 'b', uint: 2 ** 33 },
        { name: 'c', str: 'x' },
      ],
    },
  },
];

describe('encodeBatchFrame', () => {
  it('produces exactly the bytes of encodeFrame(encodeMessage({ batch }))', () => {
    const records = sample.map(encodeRecord);
    const got = encodeBatchFrame(records);
    expect(got.toString('hex')).toBe(reference(records).toString('hex'));
  });

  it('matches for an empty batch', () => {
    const got = encodeBatchFrame([]);
    expect(got.toString('hex')).toBe(reference([]).toString('hex'));
    // marker, length 2, crc, then Frame.batch (tag 82) of length 0
    expect(got.length).toBe(4 + 1 + 4 + 2);
    expect([...got.subarray(9)]).toEqual([82, 0]);
  });

  it('matches across varint length boundaries (records and batch of 127/128/16384+ bytes)', () => {
    const rng = mulberry32(11);
    const makeExec = (filenameLen: number, seq: number): Uint8Array =>
      encodeRecord({ seq, handle: 1, eventId: 1, exec: { task: { pid: seq, comm: 'c' }, filename: 'f'.repeat(filenameLen) } });
    // Find filename lengths that put the encoded record right at 127 and 128 bytes.
    const at = (target: number): Uint8Array => {
      for (let n = 0; n < target; n++) {
        const r = makeExec(n, 1);
        if (r.length === target) return r;
      }
      throw new Error(`no record of ${target} bytes`);
    };
    const r127 = at(127);
    const r128 = at(128);
    expect(r127.length).toBe(127);
    expect(r128.length).toBe(128);
    for (const records of [
      [r127],
      [r128],
      [r127, r128],
      [makeExec(20000, 5)],
      Array.from({ length: 300 }, (_, i) => makeExec(rng.int(0, 200), i + 1)),
    ]) {
      const got = encodeBatchFrame(records);
      expect(got.equals(reference(records)), `batch of ${records.length}`).toBe(true);
    }
  });

  it('decodes back to the same records through FrameDecoder and decodeMessage', () => {
    const records = sample.map(encodeRecord);
    const frames = decodeAll(Buffer.concat([encodeBatchFrame(records), encodeBatchFrame(records.slice(0, 2))]));
    expect(frames).toHaveLength(2);
    const f = frames[0]!;
    expect(f.body).toBe('batch');
    const recs = f.batch!.records as pb.Record[]; // decoded messages, not plain interfaces
    expect(recs).toHaveLength(5);
    expect(frames[1]!.batch!.records).toHaveLength(2);

    const hb = recs[0]!;
    expect(hb.seq).toBe(1);
    expect(hb.monoNs).toBe(1_000_000_123);
    // 64-bit fields come back as plain numbers (no Long); the wall clock is exact to a double.
    expect(typeof hb.wallNs).toBe('number');
    expect(hb.wallNs).toBe(1_752_000_000_000_000_000);
    expect(hb.handle).toBe(3);
    expect(hb.payload).toBe('heartbeat');
    expect(hb.heartbeat!.count).toBe(42);
    expect(hb.heartbeat!.intervalMs).toBe(1000);
    expect(hb.heartbeat!.delayMs).toBe(1.5);

    const sig = recs[1]!;
    expect(sig.payload).toBe('signal');
    expect(sig.signal!.sig).toBe(11);
    expect(sig.signal!.target!.pid).toBe(4321);
    expect(sig.signal!.target!.comm).toBe('crasher');
    expect(sig.signal!.senderIsKernel).toBe(true);

    const loss = recs[2]!;
    expect(loss.payload).toBe('loss');
    expect(loss.loss!.source).toBe(v1.LossEvent.Source.AGENT_RING);
    expect(loss.loss!.count).toBe(17);
    expect(loss.loss!.firstMonoNs).toBe(10);
    expect(loss.loss!.lastMonoNs).toBe(20);

    const exec = recs[3]!;
    expect(exec.payload).toBe('exec');
    expect(exec.exec!.filename).toBe('/usr/bin/true');
    expect(exec.exec!.oldPid).toBe(98);
    expect(exec.monoNs).toBe(0);

    const kp = recs[4]!;
    expect(kp.seq).toBe(2 ** 40 + 7);
    expect(kp.monoNs).toBe(2 ** 52);
    // Unset members of a oneof read as null in the generated code.
    expect((kp.kprobe!.fields as vesper.v1.KprobeField[]).map((x) => [x.name, x.value, x.int, x.uint, x.str])).toEqual([
      ['a', 'int', -5, null, null],
      ['b', 'uint', null, 2 ** 33, null],
      ['c', 'str', null, null, 'x'],
    ]);
  });

  it('accepts records given as subarrays of a larger buffer (as the ring hands them out)', () => {
    const records = sample.map(encodeRecord);
    const arena = Buffer.concat([Buffer.from([9, 9, 9]), ...records, Buffer.from([7])]);
    const views: Uint8Array[] = [];
    let off = 3;
    for (const r of records) {
      views.push(arena.subarray(off, off + r.length));
      off += r.length;
    }
    expect(encodeBatchFrame(views).equals(reference(records))).toBe(true);
  });
});
