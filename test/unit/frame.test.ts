import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { encodeFrame, FRAME_MARKER, FrameDecoder, varintLength, writeVarint } from '../../proto/frame.js';
import { mulberry32 } from './prng.js';

interface Harness {
  dec: FrameDecoder;
  frames: Buffer[];
  errors: VesperError[];
  /** Frames and errors interleaved, in the order the decoder reported them. */
  events: string[];
}

function harness(maxFrameBytes = 1024): Harness {
  const frames: Buffer[] = [];
  const errors: VesperError[] = [];
  const events: string[] = [];
  const dec = new FrameDecoder({
    maxFrameBytes,
    // The payload is a view valid only during the call: copy it.
    onFrame: (p) => {
      frames.push(Buffer.from(p));
      events.push(`frame:${p.toString('latin1')}`);
    },
    onError: (e) => {
      errors.push(e);
      events.push(`error:${e.code}`);
    },
  });
  return { dec, frames, errors, events };
}

const text = (s: string): Buffer => Buffer.from(s, 'latin1');
const codes = (h: Harness): string[] => h.errors.map((e) => e.code);

describe('varint helpers', () => {
  it('varintLength matches the number of bytes writeVarint writes', () => {
    for (const n of [0, 1, 0x7f, 0x80, 0x3fff, 0x4000, 0x1fffff, 0x200000, 0xfffffff, 0x10000000, 0xffffffff]) {
      const buf = new Uint8Array(8);
      expect(writeVarint(buf, 0, n), `n=${n}`).toBe(varintLength(n));
    }
    expect(varintLength(127)).toBe(1);
    expect(varintLength(128)).toBe(2);
    expect(varintLength(300)).toBe(2);
  });

  it('writeVarint writes little-endian base-128 groups', () => {
    const buf = new Uint8Array(4);
    expect(writeVarint(buf, 1, 300)).toBe(3);
    expect([...buf]).toEqual([0, 0xac, 0x02, 0]);
  });
});

describe('encodeFrame', () => {
  it('lays out marker, varint length, crc32 (LE) and payload', () => {
    const f = encodeFrame(text('abc'));
    // crc32("abc") = 0x352441c2
    expect([...f]).toEqual([0xf5, 0x56, 0x53, 0x50, 0x03, 0xc2, 0x41, 0x24, 0x35, 0x61, 0x62, 0x63]);
  });

  it('uses a multi-byte varint for payloads of 128 bytes and more', () => {
    const payload = Buffer.alloc(300, 7);
    const f = encodeFrame(payload);
    expect(f.length).toBe(4 + 2 + 4 + 300);
    expect([...f.subarray(0, 6)]).toEqual([0xf5, 0x56, 0x53, 0x50, 0xac, 0x02]);
    expect(f.readUInt32LE(6)).toBe(crc32(payload));
    expect(f.subarray(10).equals(payload)).toBe(true);
  });

  it('frames an empty payload', () => {
    const f = encodeFrame(new Uint8Array(0));
    expect([...f]).toEqual([0xf5, 0x56, 0x53, 0x50, 0, 0, 0, 0, 0]);
  });
});

describe('FrameDecoder', () => {
  it('round-trips payloads of many sizes, including varint boundaries', () => {
    const rng = mulberry32(1);
    const sizes = [1, 2, 127, 128, 129, 16383, 16384, 16385, 70000];
    const h = harness(100_000);
    const payloads = sizes.map((n) => rng.bytes(n));
    for (const p of payloads) h.dec.push(encodeFrame(p));
    expect(h.errors).toEqual([]);
    expect(h.frames.length).toBe(sizes.length);
    h.frames.forEach((f, i) => expect(f.equals(payloads[i]!), `frame ${i} (${sizes[i]} bytes)`).toBe(true));
    expect(h.dec.framesOk).toBe(sizes.length);
    expect(h.dec.errors).toBe(0);
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('decodes many frames pushed in one chunk, in order', () => {
    const h = harness();
    const payloads = Array.from({ length: 50 }, (_, i) => text(`payload-${i}-${'x'.repeat(i)}`));
    h.dec.push(Buffer.concat(payloads.map((p) => encodeFrame(p))));
    expect(h.errors).toEqual([]);
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(payloads.map((p) => p.toString('latin1')));
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('decodes frames fed one byte at a time', () => {
    const h = harness();
    const payloads = [text('first'), Buffer.alloc(1), Buffer.alloc(200, 0x33), text('last')];
    const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
    const seen: number[] = [];
    for (let i = 0; i < stream.length; i++) {
      h.dec.push(stream.subarray(i, i + 1));
      seen.push(h.frames.length);
      expect(h.dec.pendingBytes).toBeLessThanOrEqual(4 + 2 + 4 + 200);
    }
    expect(h.errors).toEqual([]);
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(payloads.map((p) => p.toString('latin1')));
    // The first frame appears exactly when its last byte arrives, not earlier.
    const firstLen = encodeFrame(payloads[0]!).length;
    expect(seen[firstLen - 2]).toBe(0);
    expect(seen[firstLen - 1]).toBe(1);
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('decodes a stream split at random points', () => {
    const rng = mulberry32(7);
    const payloads = Array.from({ length: 200 }, () => rng.bytes(rng.int(1, 300)));
    const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
    const h = harness();
    for (let pos = 0; pos < stream.length;) {
      const n = rng.int(1, 64);
      h.dec.push(stream.subarray(pos, pos + n));
      pos += n;
    }
    expect(h.errors).toEqual([]);
    expect(h.frames.length).toBe(payloads.length);
    h.frames.forEach((f, i) => expect(f.equals(payloads[i]!)).toBe(true));
  });

  it('reports garbage before and between frames once each, with the skipped count, and keeps decoding', () => {
    const h = harness();
    h.dec.push(Buffer.concat([text('xyz12'), encodeFrame(text('aaa')), text('qq'), encodeFrame(text('bbb'))]));
    expect(h.events).toEqual(['error:VSP_FRAME_GARBAGE', 'frame:aaa', 'error:VSP_FRAME_GARBAGE', 'frame:bbb']);
    expect(h.errors[0]!.message).toBe('skipped 5 bytes that were not a frame');
    expect(h.errors[1]!.message).toBe('skipped 2 bytes that were not a frame');
    expect(h.errors.every((e) => e instanceof VesperError)).toBe(true);
    expect(h.dec.bytesSkipped).toBe(7);
    expect(h.dec.errors).toBe(2);
    expect(h.dec.framesOk).toBe(2);
  });

  it('sums garbage spread over several pushes into one report', () => {
    const h = harness();
    // Includes partial markers, which must not be mistaken for the start of a frame.
    const garbage = [text('hello '), Buffer.from([0xf5, 0x56]), text(' world'), Buffer.from([0xf5, 0x56, 0x53]), text('!')];
    for (const g of garbage) h.dec.push(g);
    expect(h.errors).toEqual([]); // nothing reported until the garbage ends
    expect(h.dec.pendingBytes).toBeLessThanOrEqual(3);
    h.dec.push(encodeFrame(text('ok')));
    const total = garbage.reduce((n, g) => n + g.length, 0);
    expect(h.events).toEqual(['error:VSP_FRAME_GARBAGE', 'frame:ok']);
    expect(h.errors[0]!.message).toBe(`skipped ${total} bytes that were not a frame`);
    expect(h.dec.bytesSkipped).toBe(total);
  });

  it('rejects an oversized length prefix without buffering for it, then recovers', () => {
    const max = 1024;
    const h = harness(max);
    const header = Buffer.alloc(4 + 5);
    FRAME_MARKER.copy(header, 0);
    const hdrEnd = writeVarint(header, 4, 0x0fffffff); // 268 MB
    h.dec.push(header.subarray(0, hdrEnd));
    expect(codes(h)).toEqual([ErrorCode.FRAME_TOO_LARGE]);
    expect(h.errors[0]!.message).toContain(`${0x0fffffff} bytes exceeds the maximum of ${max}`);
    expect(h.dec.pendingBytes).toBeLessThan(16);
    // The "body" of the hostile frame streams in: none of it is held.
    const rng = mulberry32(3);
    for (let i = 0; i < 64; i++) {
      h.dec.push(rng.bytes(4096));
      expect(h.dec.pendingBytes).toBeLessThan(16);
    }
    h.dec.push(encodeFrame(text('after')));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['after']);
    expect(codes(h).filter((c) => c === ErrorCode.FRAME_TOO_LARGE)).toHaveLength(1);
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('checks the length against the maximum before waiting for the header to complete the frame', () => {
    // Length prefix split from the marker; the error comes as soon as the varint is whole.
    const h = harness(100);
    h.dec.push(FRAME_MARKER);
    h.dec.push(Buffer.from([0xe5]));
    expect(h.errors).toEqual([]);
    h.dec.push(Buffer.from([0x00])); // 0x65 = 101, one over the maximum (non-minimal varint)
    expect(codes(h)).toEqual([ErrorCode.FRAME_TOO_LARGE]);
    expect(h.dec.pendingBytes).toBeLessThan(16);
  });

  it('accepts a frame of exactly maxFrameBytes and rejects one byte more', () => {
    const h = harness(300);
    h.dec.push(encodeFrame(Buffer.alloc(300, 1)));
    expect(h.frames).toHaveLength(1);
    expect(h.errors).toEqual([]);
    h.dec.push(Buffer.concat([encodeFrame(Buffer.alloc(301, 2)), encodeFrame(text('next'))]));
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(h.frames.map((f) => f.length)).toEqual([300, 4]);
    expect(h.frames[1]!.toString()).toBe('next');
  });

  it('rejects a frame whose payload was corrupted and resynchronises on the next one', () => {
    const h = harness();
    const bad = encodeFrame(text('corrupted payload'));
    bad[bad.length - 3]! ^= 0x01;
    h.dec.push(Buffer.concat([encodeFrame(text('before')), bad, encodeFrame(text('after'))]));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['before', 'after']);
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_CRC);
    expect(codes(h).filter((c) => c === ErrorCode.FRAME_CRC)).toHaveLength(1);
    expect(h.errors[0]!.message).toBe('frame of 17 bytes failed its CRC check');
    expect(h.events.indexOf('error:VSP_FRAME_CRC')).toBeLessThan(h.events.indexOf('frame:after'));
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('rejects a frame whose CRC bytes were corrupted', () => {
    const h = harness();
    const bad = encodeFrame(text('payload'));
    bad[5]! ^= 0x80; // first CRC byte
    h.dec.push(Buffer.concat([bad, encodeFrame(text('good'))]));
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_CRC);
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['good']);
  });

  it('ignores a sync marker inside garbage when the CRC does not match', () => {
    const h = harness();
    // A fake header claiming 5 bytes, then the real frame.
    const fake = Buffer.concat([FRAME_MARKER, Buffer.from([0x05, 1, 2, 3, 4]), text('abcde')]);
    h.dec.push(Buffer.concat([fake, encodeFrame(text('real'))]));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['real']);
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_CRC);
  });

  it('delivers good frames that follow a truncated frame once enough bytes arrive', () => {
    const h = harness();
    const truncated = encodeFrame(Buffer.alloc(100, 0x41)).subarray(0, 20); // header + 10 of 100 bytes
    const good = Array.from({ length: 10 }, (_, i) => encodeFrame(text(`good-${i}`)));
    h.dec.push(Buffer.concat([truncated, ...good]));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(good.map((_, i) => `good-${i}`));
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_CRC); // the truncated frame, completed by other bytes, fails its CRC
    expect(h.dec.pendingBytes).toBe(0);
  });

  it('delivers a complete frame buffered behind a truncated one when the partial frame is discarded', () => {
    const h = harness();
    const truncated = encodeFrame(Buffer.alloc(100, 0x41)).subarray(0, 20);
    h.dec.push(Buffer.concat([truncated, encodeFrame(text('survivor'))]));
    // The stream stalls here: the 100-byte frame will never complete.
    expect(h.frames).toEqual([]);
    h.dec.discardPartial('stalled');
    expect(codes(h)).toContain(ErrorCode.FRAME_TRUNCATED);
    // The survivor frame was complete and intact; giving up on the broken frame should not lose it.
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['survivor']);
  });

  it("discardPartial('stalled') drops an incomplete frame and reports VSP_FRAME_TRUNCATED", () => {
    const h = harness();
    const whole = encodeFrame(Buffer.alloc(50, 9));
    h.dec.push(whole.subarray(0, 30));
    expect(h.dec.pendingBytes).toBe(30);
    const now = Date.now();
    const waiting = h.dec.pendingForMs(now + 5000);
    expect(waiting).toBeGreaterThanOrEqual(5000);
    expect(waiting).toBeLessThan(6000);
    expect(h.dec.discardPartial('stalled')).toBe(30);
    expect(codes(h)).toEqual([ErrorCode.FRAME_TRUNCATED]);
    expect(h.errors[0]!.message).toContain('stream stalled inside a frame');
    expect(h.dec.pendingBytes).toBe(0);
    expect(h.dec.pendingForMs(now + 5000)).toBe(0);
    // A fresh frame decodes cleanly afterwards; the rest of the dropped frame never arrives.
    h.dec.push(encodeFrame(text('fresh')));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['fresh']);
    expect(codes(h)).toEqual([ErrorCode.FRAME_TRUNCATED]);
  });

  it('discardPartial with nothing buffered reports nothing and returns 0', () => {
    const h = harness();
    h.dec.push(encodeFrame(text('x')));
    expect(h.dec.discardPartial('ended')).toBe(0);
    expect(h.errors).toEqual([]);
    expect(h.dec.pendingForMs()).toBe(0);
  });

  it('reports a varint of 5 bytes all with the continuation bit as VSP_FRAME_BAD_LENGTH and recovers', () => {
    const h = harness();
    const badHeader = Buffer.concat([FRAME_MARKER, Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80])]);
    h.dec.push(Buffer.concat([badHeader, encodeFrame(text('next'))]));
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_BAD_LENGTH);
    expect(codes(h).filter((c) => c === ErrorCode.FRAME_BAD_LENGTH)).toHaveLength(1);
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['next']);
  });

  it('detects a bad varint that arrives byte by byte', () => {
    const h = harness();
    h.dec.push(FRAME_MARKER);
    for (let i = 0; i < 4; i++) {
      h.dec.push(Buffer.from([0xff]));
      expect(h.errors).toEqual([]);
    }
    h.dec.push(Buffer.from([0xff]));
    expect(codes(h)).toEqual([ErrorCode.FRAME_BAD_LENGTH]);
    h.dec.push(encodeFrame(text('ok')));
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['ok']);
  });

  it('treats a 5-byte varint that terminates as a length (too large), not a bad varint', () => {
    const h = harness();
    h.dec.push(Buffer.concat([FRAME_MARKER, Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]), encodeFrame(text('ok'))]));
    expect(codes(h)[0]).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(h.errors[0]!.message).toContain(`${0xffffffff} bytes`);
    expect(h.frames.map((f) => f.toString('latin1'))).toEqual(['ok']);
  });

  it('never throws and never buffers more than maxFrameBytes + 16 on random streams', () => {
    const max = 256;
    for (let iter = 0; iter < 2000; iter++) {
      const rng = mulberry32(0x5eed0000 + iter);
      const parts: Buffer[] = [];
      const planted: Buffer[] = [];
      const pieces = rng.int(1, 12);
      for (let k = 0; k < pieces; k++) {
        const what = rng.int(0, 5);
        if (what === 0) {
          const p = rng.bytes(rng.int(1, max));
          planted.push(p);
          parts.push(encodeFrame(p));
        } else if (what === 1) {
          // a fake header: marker plus random bytes (random length prefix, random CRC)
          parts.push(Buffer.concat([FRAME_MARKER, rng.bytes(rng.int(0, 12))]));
        } else if (what === 2) {
          // a frame cut short
          const f = encodeFrame(rng.bytes(rng.int(1, max)));
          parts.push(f.subarray(0, rng.int(0, f.length - 1)));
        } else if (what === 3) {
          // a frame with one byte flipped somewhere after the marker
          const f = encodeFrame(rng.bytes(rng.int(1, 64)));
          f[rng.int(4, f.length - 1)]! ^= 1 << rng.int(0, 7);
          parts.push(f);
        } else {
          parts.push(rng.bytes(rng.int(0, 64)));
        }
      }
      // Enough trailing filler that any fake or cut header is resolved by the end.
      parts.push(Buffer.alloc(max + 16, 0x11));
      const stream = Buffer.concat(parts);
      const got: Buffer[] = [];
      const dec = new FrameDecoder({
        maxFrameBytes: max,
        onFrame: (p) => got.push(Buffer.from(p)),
        onError: (e) => {
          if (!(e instanceof VesperError) || !e.code.startsWith('VSP_FRAME_')) throw new Error(`unexpected error ${String(e)}`);
        },
      });
      try {
        for (let pos = 0; pos < stream.length;) {
          const n = rng.int(1, 80);
          dec.push(stream.subarray(pos, pos + n));
          pos += n;
          if (dec.pendingBytes > max + 16) throw new Error(`pendingBytes ${dec.pendingBytes} > ${max + 16}`);
        }
        dec.discardPartial('ended');
      } catch (err) {
        throw new Error(`iteration ${iter}: ${(err as Error).message}`, { cause: err });
      }
      // Every intact frame that was planted comes out, in order, and nothing else does
      // (cut, fake and bit-flipped frames all fail their CRC or length checks).
      expect(
        got.map((g) => g.toString('hex')),
        `iteration ${iter}`,
      ).toEqual(planted.map((p) => p.toString('hex')));
      expect(dec.pendingBytes).toBe(0);
    }
  });

  it('never throws on purely random bytes', () => {
    const rng = mulberry32(99);
    const dec = new FrameDecoder({ maxFrameBytes: 64, onFrame: () => {}, onError: () => {} });
    for (let i = 0; i < 2000; i++) {
      const chunk = rng.bytes(rng.int(0, 50));
      // sprinkle markers so the header paths run, not just the skip path
      if (chunk.length >= 4 && rng.chance(0.3)) FRAME_MARKER.copy(chunk, rng.int(0, chunk.length - 4));
      expect(() => dec.push(chunk)).not.toThrow();
      expect(dec.pendingBytes).toBeLessThanOrEqual(64 + 16);
    }
  });
});

describe('FrameDecoder and empty frames', () => {
  it('refuses a zero-length frame (a marker followed by zeros is noise, not a message)', () => {
    const errors: string[] = [];
    const frames: Buffer[] = [];
    const dec = new FrameDecoder({ maxFrameBytes: 1024, onFrame: (p) => frames.push(Buffer.from(p)), onError: (e) => errors.push(e.code) });
    dec.push(Buffer.concat([FRAME_MARKER, Buffer.alloc(5), encodeFrame(Buffer.from('next'))]));
    expect(errors).toEqual([ErrorCode.FRAME_BAD_LENGTH]);
    expect(frames.map((f) => f.toString())).toEqual(['next']);
  });
});
