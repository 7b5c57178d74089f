import { describe, expect, it } from 'vitest';
import { v1, type pb } from '../../proto/codec.js';
import { RecordRing } from '../../guest-agent/ring/record-ring.js';
import { mulberry32 } from './prng.js';

function fakeClock(): () => { mono: number; wall: number } {
  let t = 1_000_000;
  return () => {
    t += 1000;
    return { mono: t, wall: 1_700_000_000_000_000_000 + t };
  };
}

const beat = (count: number, monoNs = count * 10): pb.IRecord => ({
  monoNs,
  handle: 7,
  eventId: 1,
  heartbeat: { count, intervalMs: 1000 },
});

function take(ring: RecordRing, maxRecords = 1_000_000, maxBytes = 1 << 30): pb.Record[] {
  // Decode at once: the views are only valid until the next append or ack.
  return ring.takeUnsent(maxRecords, maxBytes).map((b) => v1.Record.decode(b));
}

const summary = (r: pb.Record): string =>
  r.payload === 'loss'
    ? `#${r.seq} loss(${r.loss!.count})`
    : r.payload === 'heartbeat'
      ? `#${r.seq} hb(${r.heartbeat!.count})`
      : `#${r.seq} ${r.payload}`;

describe('RecordRing basics', () => {
  it('numbers records 1, 2, 3, ... and hands them out in order', () => {
    const ring = new RecordRing(16, 4096, fakeClock());
    expect(ring.append(beat(10))).toBe(1);
    expect(ring.append(beat(11))).toBe(2);
    expect(ring.append(beat(12))).toBe(3);
    expect(ring.firstSeq).toBe(1);
    expect(ring.lastSeq).toBe(3);
    expect(ring.size).toBe(3);
    expect(ring.unsent).toBe(3);
    const got = take(ring);
    expect(got.map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(got.map((r) => r.heartbeat!.count)).toEqual([10, 11, 12]);
    expect(got[0]!.monoNs).toBe(100);
    expect(got[0]!.handle).toBe(7);
    expect(got[0]!.eventId).toBe(1);
    expect(ring.unsent).toBe(0);
    // Nothing new: nothing handed out again.
    expect(ring.takeUnsent(10, 1000)).toEqual([]);
  });

  it('respects maxRecords', () => {
    const ring = new RecordRing(16, 4096, fakeClock());
    for (let i = 1; i <= 5; i++) ring.append(beat(i));
    expect(take(ring, 2).map((r) => r.seq)).toEqual([1, 2]);
    expect(take(ring, 2).map((r) => r.seq)).toEqual([3, 4]);
    expect(take(ring, 2).map((r) => r.seq)).toEqual([5]);
    expect(take(ring, 2)).toEqual([]);
  });

  it('respects maxBytes, but always hands out at least one record', () => {
    const ring = new RecordRing(16, 4096, fakeClock());
    for (let i = 1; i <= 5; i++) ring.append(beat(i));
    const len = ring.takeUnsent(1, 1 << 20)[0]!.length; // all five encode to the same size
    ring.rewind();
    expect(take(ring, 100, len * 2).map((r) => r.seq)).toEqual([1, 2]);
    expect(take(ring, 100, len * 2 + len - 1).map((r) => r.seq)).toEqual([3, 4]);
    expect(take(ring, 100, 1).map((r) => r.seq)).toEqual([5]); // smaller than one record
  });

  it('ack frees records; rewind hands out only what is unacknowledged again', () => {
    const ring = new RecordRing(16, 4096, fakeClock());
    for (let i = 1; i <= 6; i++) ring.append(beat(i));
    expect(take(ring).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    ring.ack(2);
    expect(ring.firstSeq).toBe(3);
    expect(ring.size).toBe(4);
    expect(ring.unsent).toBe(0);
    ring.rewind();
    expect(ring.unsent).toBe(4);
    const again = take(ring);
    expect(again.map((r) => r.seq)).toEqual([3, 4, 5, 6]);
    expect(again.map((r) => r.heartbeat!.count)).toEqual([3, 4, 5, 6]);
    ring.ack(6);
    expect(ring.size).toBe(0);
    expect(ring.stats().bytes).toBe(0);
    ring.rewind();
    expect(take(ring)).toEqual([]);
    // Numbering continues after the ring emptied.
    expect(ring.append(beat(7))).toBe(7);
    expect(take(ring).map(summary)).toEqual(['#7 hb(7)']);
  });

  it('ack of a sequence number not yet sent still frees it, and takeUnsent skips it', () => {
    const ring = new RecordRing(16, 4096, fakeClock());
    for (let i = 1; i <= 4; i++) ring.append(beat(i));
    ring.ack(2);
    expect(take(ring).map((r) => r.seq)).toEqual([3, 4]);
  });

  it('keeps an unchanged stats picture', () => {
    const ring = new RecordRing(8, 1000, fakeClock());
    ring.append(beat(1));
    ring.append(beat(2));
    take(ring, 1);
    const s = ring.stats();
    expect(s).toMatchObject({
      capacityRecords: 8,
      capacityBytes: 1000,
      records: 2,
      firstSeq: 1,
      lastSeq: 2,
      sentSeq: 1,
      dropped: 0,
      lossRecords: 0,
    });
    expect(s.bytes).toBeGreaterThan(0);
  });
});

describe('RecordRing when full', () => {
  it('by record count: append returns 0 (one slot is kept for the loss record)', () => {
    const ring = new RecordRing(4, 1 << 16, fakeClock());
    expect([1, 2, 3].map((i) => ring.append(beat(i)))).toEqual([1, 2, 3]);
    expect(ring.append(beat(4))).toBe(0);
    expect(ring.stats().dropped).toBe(1);
    expect(ring.lastSeq).toBe(3);
  });

  it('by record count: after ack, one loss record with the dropped count comes before new records', () => {
    const ring = new RecordRing(4, 1 << 16, fakeClock());
    for (let i = 1; i <= 3; i++) expect(ring.append(beat(i))).toBe(i);
    const dropped = [4, 5, 6, 7, 8];
    for (const i of dropped) expect(ring.append(beat(i, 1000 + i)), `beat ${i}`).toBe(0);
    expect(ring.stats().dropped).toBe(5);
    expect(take(ring).map(summary)).toEqual(['#1 hb(1)', '#2 hb(2)', '#3 hb(3)']);
    ring.ack(3);
    ring.append(beat(9));
    const after = take(ring);
    expect(after.map(summary)).toEqual(['#4 loss(5)', '#5 hb(9)']);
    const loss = after[0]!;
    expect(loss.handle).toBe(0);
    expect(loss.loss!.source).toBe(v1.LossEvent.Source.AGENT_RING);
    expect(loss.loss!.firstMonoNs).toBe(1004);
    expect(loss.loss!.lastMonoNs).toBe(1008);
  });

  it('by bytes: append returns 0 while records fit by count', () => {
    const ring = new RecordRing(1000, 400, fakeClock());
    const seqs: number[] = [];
    for (let i = 1; i <= 40; i++) seqs.push(ring.append(beat(i)));
    const stored = seqs.filter((s) => s > 0);
    expect(stored.length).toBeGreaterThan(5);
    expect(stored.length).toBeLessThan(40);
    // Once it is full nothing more is stored, and the stored ones are a prefix 1..n.
    expect(stored).toEqual(Array.from({ length: stored.length }, (_, i) => i + 1));
    expect(ring.stats().bytes).toBeLessThanOrEqual(400);
  });

  it('by bytes: after ack, one loss record with the dropped count comes before new records', () => {
    const ring = new RecordRing(1000, 400, fakeClock());
    let stored = 0;
    let dropped = 0;
    for (let i = 1; i <= 40; i++) {
      if (ring.append(beat(i)) > 0) stored++;
      else dropped++;
    }
    expect(dropped).toBeGreaterThan(1);
    const before = take(ring);
    expect(before.filter((r) => r.payload === 'heartbeat').map((r) => r.heartbeat!.count)).toEqual(
      Array.from({ length: stored }, (_, i) => i + 1),
    );
    ring.ack(ring.lastSeq);
    ring.append(beat(41));
    const after = take(ring);
    expect(after.map(summary)).toEqual([`#${stored + 1} loss(${dropped})`, `#${stored + 2} hb(41)`]);
  });

  it('never loses count of what it dropped (loss counts + stored == appended)', () => {
    const ring = new RecordRing(4, 1 << 16, fakeClock());
    for (let i = 1; i <= 20; i++) ring.append(beat(i));
    const a = take(ring);
    ring.ack(ring.lastSeq);
    const b = take(ring);
    const all = [...a, ...b];
    const beats = all.filter((r) => r.payload === 'heartbeat').length;
    const lost = all.filter((r) => r.payload === 'loss').reduce((n, r) => n + Number(r.loss!.count), 0);
    expect(beats + lost).toBe(20);
    expect(ring.stats().dropped).toBe(lost);
  });
});

describe('RecordRing under a long randomized run', () => {
  // Records of varying size make the byte arena wrap at many different offsets.
  const filename = (n: number): string => `/bin/p${n}-${'abcdefghij'.repeat(n % 13)}`.slice(0, 3 + ((n * 7) % 120));

  function runOnce(seed: number, capacityRecords: number, capacityBytes: number, steps: number) {
    const rng = mulberry32(seed);
    const ring = new RecordRing(capacityRecords, capacityBytes, fakeClock());
    let appended = 0;
    let hostAcked = 0; // highest seq the simulated host holds
    const delivered: pb.Record[] = [];
    let wraps = 0;
    let lastOffset = -1;

    const receive = (maxRecords: number, maxBytes: number): void => {
      const views = ring.takeUnsent(maxRecords, maxBytes);
      for (const v of views) {
        // Track where records sit in the arena, to prove the arena wrapped.
        if (lastOffset >= 0 && v.byteOffset < lastOffset) wraps++;
        lastOffset = v.byteOffset;
        const r = v1.Record.decode(v);
        if (r.seq <= hostAcked) continue; // a resend after rewind
        expect(r.seq, `seed ${seed}: gap before ${summary(r)}`).toBe(hostAcked + 1);
        hostAcked = r.seq;
        delivered.push(r);
      }
    };

    for (let step = 0; step < steps; step++) {
      const op = rng.int(0, 9);
      if (op <= 4) {
        const n = ++appended;
        const payload: pb.IRecord =
          n % 2 === 0
            ? beat(n, n)
            : { monoNs: n, handle: 9, eventId: 2, exec: { task: { pid: n, comm: `c${n % 100}` }, filename: filename(n), oldPid: n } };
        const seq = ring.append(payload);
        expect(seq === 0 || seq === ring.lastSeq).toBe(true);
      } else if (op <= 7) {
        receive(rng.int(0, 8), rng.int(1, 400));
      } else if (op === 8) {
        ring.ack(hostAcked - rng.int(0, 3)); // the host acks what it holds (sometimes a little behind)
      } else {
        ring.rewind(); // a new link
      }
      const s = ring.stats();
      expect(s.bytes).toBeLessThanOrEqual(capacityBytes);
      expect(s.records).toBeLessThanOrEqual(capacityRecords);
    }
    // Drain: ack everything, which also flushes a pending loss count.
    for (let i = 0; i < 4; i++) {
      receive(1_000_000, 1 << 30);
      ring.ack(hostAcked);
    }
    receive(1_000_000, 1 << 30);
    expect(ring.size).toBe(0);

    // Every record intact, in order; the gaps are exactly the loss counts between them.
    let expectNext = 1;
    let lossSinceLast = 0;
    let delivered_ = 0;
    let lossTotal = 0;
    for (const r of delivered) {
      if (r.payload === 'loss') {
        expect(r.loss!.source).toBe(v1.LossEvent.Source.AGENT_RING);
        expect(r.loss!.count).toBeGreaterThan(0);
        lossSinceLast += Number(r.loss!.count);
        lossTotal += Number(r.loss!.count);
        continue;
      }
      const n = Number(r.payload === 'heartbeat' ? r.heartbeat!.count : r.exec!.task!.pid);
      expect(n, `seed ${seed}: record #${r.seq}`).toBe(expectNext + lossSinceLast);
      if (r.payload === 'heartbeat') {
        expect(n % 2).toBe(0);
        expect(r.heartbeat!.intervalMs).toBe(1000);
        expect(r.handle).toBe(7);
      } else {
        expect(r.payload).toBe('exec');
        expect(n % 2).toBe(1);
        expect(r.exec!.filename).toBe(filename(n));
        expect(r.exec!.task!.comm).toBe(`c${n % 100}`);
        expect(r.exec!.oldPid).toBe(n);
        expect(r.handle).toBe(9);
      }
      expect(r.monoNs).toBe(n);
      expectNext = n + 1;
      lossSinceLast = 0;
      delivered_++;
    }
    expect(expectNext - 1 + lossSinceLast).toBe(appended);
    expect(delivered_ + lossTotal).toBe(appended);
    expect(ring.stats().dropped).toBe(lossTotal);
    return { appended, lossTotal, wraps, lossRecords: ring.stats().lossRecords };
  }

  it('keeps every record intact and in order, accounting for all drops (small arena, many wraps)', () => {
    const r = runOnce(12345, 64, 2048, 20_000);
    expect(r.appended).toBeGreaterThan(5000);
    expect(r.wraps).toBeGreaterThan(20); // the byte arena really wrapped
    expect(r.lossTotal).toBeGreaterThan(0); // and the ring really filled up
  });

  it('same property for other shapes: count-bound and byte-bound rings', () => {
    for (const [seed, recs, bytes] of [
      [1, 8, 1 << 16],
      [2, 1000, 700],
      [3, 32, 1024],
      [4, 3, 300],
    ] as const) {
      const r = runOnce(seed, recs, bytes, 5000);
      expect(r.appended, `seed ${seed}`).toBeGreaterThan(1000);
    }
  });
});
