import { describe, expect, it } from 'vitest';
import { walkPage, type PageVisitor } from '../../guest-agent/kernel/ring-page.js';
import { mulberry32 } from './prng.js';

// Builders for the kernel ring-buffer page layout (kernel/trace/ring_buffer.c):
//   u64 timestamp | u64 commit | data ... [u64 missed count]
// Each entry starts with a u32: type_len (low 5 bits) | time_delta (high 27 bits).

const hdr = (typeLen: number, delta: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(((delta << 5) | typeLen) >>> 0);
  return b;
};
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};

/** A small data event: type_len = len/4 (len a multiple of 4, 4..112). */
function small(payload: Buffer, delta: number): Buffer {
  if (payload.length % 4 !== 0 || payload.length === 0 || payload.length > 112) throw new Error('bad small payload');
  return Buffer.concat([hdr(payload.length / 4, delta), payload]);
}
/** A data event with type_len 0: length (payload + 4) in the next u32. */
function big(payload: Buffer, delta: number): Buffer {
  return Buffer.concat([hdr(0, delta), u32(payload.length + 4), payload]);
}
const timeExtend = (delta: number, high: number): Buffer => Buffer.concat([hdr(30, delta), u32(high)]);
const absStamp = (delta: number, high: number): Buffer => Buffer.concat([hdr(31, delta), u32(high)]);
/**
 * A discarded event: padding with a non-zero delta; array[0] (the first word after the
 * header) holds the length of what follows the header, itself included: 4 + array[0] in all.
 */
const discarded = (bodyLen: number, delta = 1): Buffer => Buffer.concat([hdr(29, delta), u32(bodyLen), Buffer.alloc(bodyLen - 4, 0xee)]);

interface PageOpts {
  ts: number; // < 2^53
  missed?: boolean;
  missedCount?: number; // stored after the data (sets bit 30)
  commitOverride?: number;
  size?: number; // total buffer size; default 4096
  fill?: number;
}

function page(entries: Buffer[], o: PageOpts): Buffer {
  const data = Buffer.concat(entries);
  const size = o.size ?? 4096;
  const buf = Buffer.alloc(size, o.fill ?? 0);
  buf.writeUInt32LE(o.ts % 0x100000000, 0);
  buf.writeUInt32LE(Math.floor(o.ts / 0x100000000), 4);
  let commit = data.length;
  if (o.missed) commit |= 0x80000000;
  if (o.missedCount !== undefined) commit |= 0x40000000;
  buf.writeUInt32LE((o.commitOverride ?? commit) >>> 0, 8);
  buf.writeUInt32LE(0, 12);
  data.copy(buf, 16);
  if (o.missedCount !== undefined) {
    buf.writeUInt32LE(o.missedCount % 0x100000000, 16 + data.length);
    buf.writeUInt32LE(Math.floor(o.missedCount / 0x100000000), 16 + data.length + 4);
  }
  return buf;
}

interface Seen {
  start: number;
  len: number;
  ts: number;
  data: string;
}

function walk(buf: Buffer, size = buf.length): { n: number; events: Seen[]; missed: Array<[number, number]> } {
  const events: Seen[] = [];
  const missed: Array<[number, number]> = [];
  const v: PageVisitor = {
    event(b, start, len, ts) {
      events.push({ start, len, ts, data: b.toString('latin1', start, start + len) });
    },
    missed(count, ts) {
      missed.push([count, ts]);
    },
  };
  const n = walkPage(buf, size, v);
  return { n, events, missed };
}

const str = (s: string): Buffer => Buffer.from(s, 'latin1');

describe('walkPage', () => {
  it('visits small data events with page time plus accumulated deltas and the right offsets', () => {
    const buf = page([small(str('AAAA'), 5), small(str('BBBBBBBB'), 7), small(str('CCCC'), 0)], { ts: 1_000_000 });
    const r = walk(buf);
    expect(r.n).toBe(3);
    expect(r.missed).toEqual([]);
    expect(r.events).toEqual([
      { start: 20, len: 4, ts: 1_000_005, data: 'AAAA' },
      { start: 28, len: 8, ts: 1_000_012, data: 'BBBBBBBB' },
      { start: 40, len: 4, ts: 1_000_012, data: 'CCCC' },
    ]);
  });

  it('reads the 64-bit page timestamp (above 2^32) and the largest 27-bit delta', () => {
    const pageTs = 0x1_2345_6789;
    const buf = page([small(str('xxxx'), (1 << 27) - 1)], { ts: pageTs });
    const r = walk(buf);
    expect(r.events.map((e) => e.ts)).toEqual([pageTs + (1 << 27) - 1]);
  });

  it('handles the largest small event (type_len 28 = 112 bytes)', () => {
    const payload = Buffer.alloc(112, 0x61);
    const r = walk(page([small(payload, 3), small(str('tail'), 1)], { ts: 10 }));
    expect(r.events.map((e) => [e.start, e.len, e.ts])).toEqual([
      [20, 112, 13],
      [136, 4, 14],
    ]);
  });

  it('reads big events (type_len 0) whose length word counts itself', () => {
    const payload = Buffer.alloc(200, 0x62);
    payload.write('start', 0, 'latin1');
    const r = walk(page([big(payload, 9), small(str('next'), 1)], { ts: 100 }));
    expect(r.n).toBe(2);
    expect(r.events[0]).toMatchObject({ start: 24, len: 200, ts: 109 });
    expect(r.events[0]!.data.startsWith('start')).toBe(true);
    expect(r.events[1]).toEqual({ start: 228, len: 4, ts: 110, data: 'next' });
  });

  it('adds a time extend (delta + array[0] << 27) to the running time', () => {
    const r = walk(page([small(str('aaaa'), 1), timeExtend(5, 3), small(str('bbbb'), 7)], { ts: 1000 }));
    expect(r.events.map((e) => [e.data, e.ts])).toEqual([
      ['aaaa', 1001],
      ['bbbb', 1001 + 3 * 2 ** 27 + 5 + 7],
    ]);
    expect(r.events[1]!.start).toBe(16 + 8 + 8 + 4);
  });

  it('replaces the running time with an absolute timestamp (and deltas continue from it)', () => {
    const low = 37 * 2 ** 27 + 123; // ~5 s
    const r = walk(page([small(str('aaaa'), 50), absStamp(123, 37), small(str('bbbb'), 10), small(str('cccc'), 1)], { ts: 1_000_000 }));
    expect(r.events.map((e) => [e.data, e.ts])).toEqual([
      ['aaaa', 1_000_050],
      ['bbbb', low + 10],
      ['cccc', low + 11],
    ]);
  });

  it('keeps the bits above 59 from the page time for an absolute timestamp', () => {
    const pageTs = 3 * 2 ** 59; // exactly representable
    const r = walk(page([absStamp(0, 5), small(str('aaaa'), 512)], { ts: pageTs }));
    expect(r.events[0]!.ts).toBe(3 * 2 ** 59 + 5 * 2 ** 27 + 512);
  });

  it('stops at padding with a zero delta (the rest of the page)', () => {
    const r = walk(page([small(str('aaaa'), 1), hdr(29, 0), small(str('zzzz'), 1)], { ts: 0 }));
    expect(r.n).toBe(1);
    expect(r.events.map((e) => e.data)).toEqual(['aaaa']);
  });

  it('skips a discarded event (padding with a delta) without adding its delta to the time', () => {
    const r = walk(page([small(str('aaaa'), 10), discarded(12, 1000), small(str('bbbb'), 5)], { ts: 500 }));
    expect(r.events.map((e) => [e.data, e.ts, e.start])).toEqual([
      ['aaaa', 510, 20],
      ['bbbb', 515, 16 + 8 + 16 + 4],
    ]);
  });

  it('reports missed events without a count (bit 31 only)', () => {
    const r = walk(page([small(str('aaaa'), 1)], { ts: 777, missed: true }));
    expect(r.missed).toEqual([[0, 777]]);
    expect(r.events.map((e) => e.data)).toEqual(['aaaa']); // bit 31 is not part of the length
  });

  it('reports the missed count stored after the data (bits 31 and 30), including a 64-bit count', () => {
    const r = walk(page([small(str('aaaa'), 1), small(str('bbbb'), 1)], { ts: 900, missed: true, missedCount: 42 }));
    expect(r.missed).toEqual([[42, 900]]);
    expect(r.events.map((e) => e.data)).toEqual(['aaaa', 'bbbb']);
    const big64 = 5 * 2 ** 32 + 7;
    const r2 = walk(page([small(str('aaaa'), 1)], { ts: 1, missed: true, missedCount: big64 }));
    expect(r2.missed).toEqual([[big64, 1]]);
  });

  it('gives a missed count of 0 when the stored count would lie past size', () => {
    const full = page([small(str('aaaa'), 1)], { ts: 5, missed: true, missedCount: 9 });
    const size = 16 + 8 + 4; // data fits, the count only half does
    const r = walk(Buffer.from(full.subarray(0, size)), size);
    expect(r.missed).toEqual([[0, 5]]);
    expect(r.events.map((e) => e.data)).toEqual(['aaaa']);
  });

  it('returns 0 for a buffer shorter than the page header', () => {
    const r = walk(Buffer.alloc(15, 0xff), 15);
    expect(r).toEqual({ n: 0, events: [], missed: [] });
    expect(walk(Buffer.alloc(0), 0).n).toBe(0);
  });

  it('an empty page (commit 0) has no events', () => {
    const r = walk(page([], { ts: 1 }));
    expect(r.n).toBe(0);
    expect(r.events).toEqual([]);
  });

  it('does not read past the committed length', () => {
    // Data after the commit length (stale bytes from an earlier use of the page) is ignored.
    const buf = page([small(str('aaaa'), 1), small(str('bbbb'), 1)], { ts: 0, commitOverride: 8 });
    expect(walk(buf).events.map((e) => e.data)).toEqual(['aaaa']);
  });

  it('stops at an event that does not fit in size, never reading past it', () => {
    const entries = [small(str('aaaa'), 1), big(Buffer.alloc(100, 0x41), 1), small(str('cccc'), 1)];
    const full = page(entries, { ts: 0, size: 16 + 8 + 108 + 8 });
    for (let size = 0; size <= full.length; size++) {
      // An exact-size copy: any read past `size` would throw a RangeError.
      const buf = Buffer.from(full.subarray(0, size));
      const r = walk(buf, size);
      for (const e of r.events) expect(e.start + e.len).toBeLessThanOrEqual(size);
      const expected = size >= 24 + 108 + 8 ? 3 : size >= 24 + 108 ? 2 : size >= 24 ? 1 : 0;
      expect(r.n, `size ${size}`).toBe(expected);
    }
  });

  it('stops on a big event whose length word is below 4 or beyond the page', () => {
    expect(walk(page([small(str('aaaa'), 1), hdr(0, 1), u32(3), small(str('bbbb'), 1)], { ts: 0 })).events.map((e) => e.data)).toEqual([
      'aaaa',
    ]);
    expect(walk(page([small(str('aaaa'), 1), hdr(0, 1), u32(0xffffffff)], { ts: 0 })).events.map((e) => e.data)).toEqual(['aaaa']);
    // Length word exactly 4: a zero-length event, then on to the next.
    const r = walk(page([hdr(0, 2), u32(4), small(str('bbbb'), 1)], { ts: 0 }));
    expect(r.events.map((e) => [e.start, e.len, e.ts])).toEqual([
      [24, 0, 2],
      [28, 4, 3],
    ]);
  });

  it('never throws or reports data outside [16, size) on random and mutated pages', () => {
    const rng = mulberry32(2024);
    const base = page(
      [small(str('aaaa'), 1), big(Buffer.alloc(40, 1), 2), timeExtend(1, 1), absStamp(1, 1), discarded(8), small(str('bbbbbbbb'), 3)],
      { ts: 123456, size: 200, missed: true, missedCount: 3 },
    );
    for (let i = 0; i < 2000; i++) {
      let buf: Buffer;
      if (i % 2 === 0) {
        buf = rng.bytes(rng.int(0, 300));
      } else {
        buf = Buffer.from(base.subarray(0, rng.int(0, base.length)));
        for (let k = rng.int(1, 6); k > 0 && buf.length > 0; k--) buf[rng.int(0, buf.length - 1)] = rng.int(0, 255);
      }
      const size = buf.length;
      let events = 0;
      const visitor: PageVisitor = {
        event(_b, start, len, ts) {
          events++;
          if (start < 16 || len < 0 || start + len > size || !Number.isFinite(ts))
            throw new Error(`event [${start}, +${len}) of page size ${size}`);
        },
        missed(count) {
          if (!Number.isFinite(count) || count < 0) throw new Error(`missed ${count}`);
        },
      };
      let n = -1;
      expect(() => {
        n = walkPage(buf, size, visitor);
      }, `iteration ${i}`).not.toThrow();
      expect(n).toBe(events);
    }
  });
});
