// Framing for the host<->guest byte stream.
//
//   sync marker (4 bytes: F5 56 53 50)  varint payload length  crc32(payload) u32le  payload
//
// The marker is the resync point: after garbage, an oversized length or a CRC mismatch the
// reader skips forward to the next marker and carries on, reporting what it skipped. The
// CRC is what makes a marker that happens to sit inside garbage harmless. The length is
// checked against a maximum before a single byte is buffered for it, so a hostile length
// prefix cannot make the reader allocate.
import { crc32 } from 'node:zlib';
import { ErrorCode, VesperError } from './errors.js';

export const FRAME_MARKER = Buffer.from([0xf5, 0x56, 0x53, 0x50]);
const MARKER_LEN = 4;
const CRC_LEN = 4;
const MAX_VARINT_LEN = 5;

export function varintLength(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;
}

export function writeVarint(buf: Uint8Array, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  buf[pos++] = n;
  return pos;
}

/** Puts one payload into a frame. */
export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(MARKER_LEN + varintLength(payload.length) + CRC_LEN + payload.length);
  FRAME_MARKER.copy(out, 0);
  let pos = writeVarint(out, MARKER_LEN, payload.length);
  out.writeUInt32LE(crc32(payload), pos);
  pos += CRC_LEN;
  out.set(payload, pos);
  return out;
}

export interface FrameDecoderOptions {
  maxFrameBytes: number;
  onFrame: (payload: Buffer) => void;
  /** Called once per problem; the decoder has already resynchronised when this runs. */
  onError: (err: VesperError) => void;
}

/**
 * Turns a byte stream back into payloads. Payload buffers passed to onFrame are views into
 * the decoder's buffer, valid only during the call.
 */
/** Nothing held: one shared empty buffer, not a new one after every read. */
const EMPTY = Buffer.alloc(0);

export class FrameDecoder {
  private buf: Buffer = EMPTY;
  private skipped = 0; // garbage bytes skipped since the last good frame
  private afterFailure = false; // skipped bytes are the rest of a frame already reported
  private partialSince = 0; // Date.now() when an incomplete frame started waiting
  // An incomplete frame whose length is known is filled in place, in a buffer of its size: at
  // most maxFrameBytes plus its header, and each read copied once. (Joining the held bytes
  // with every read made a frame near maxFrameBytes that trickles in a few bytes at a time
  // cost a copy of all of it per read: a hostile guest's cheapest way to keep the manager busy.)
  private frame: Buffer | null = null;
  private filled = 0;
  framesOk = 0;
  errors = 0;
  bytesSkipped = 0;

  constructor(private readonly opts: FrameDecoderOptions) {}

  /** Bytes held waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.buf.length + this.filled;
  }

  /** How long (ms) an incomplete frame has been waiting; 0 when none. */
  pendingForMs(now = Date.now()): number {
    return this.pendingBytes > 0 && this.partialSince > 0 ? now - this.partialSince : 0;
  }

  push(chunk: Buffer): void {
    let rest = chunk;
    while (this.frame !== null) {
      const f = this.frame;
      const room = f.length - this.filled;
      if (rest.length < room) {
        rest.copy(f, this.filled);
        this.filled += rest.length;
        return;
      }
      // The frame is whole: decode it, then go on with the rest. If it turns out broken, the
      // resync may find a marker inside it and leave the next frame waiting: hence the loop.
      rest.copy(f, this.filled, 0, room);
      this.frame = null;
      this.filled = 0;
      this.decode(f);
      rest = rest.subarray(room);
    }
    if (rest.length > 0) this.decode(rest);
  }

  private decode(chunk: Buffer): void {
    const buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let need = 0; // the length of an incomplete frame at `pos`, once known
    let pos = 0;
    const end = buf.length;
    while (end - pos >= MARKER_LEN) {
      if (!this.markerAt(buf, pos)) {
        const next = buf.indexOf(FRAME_MARKER, pos + 1);
        const to = next < 0 ? end - (MARKER_LEN - 1) : next;
        this.skip(to - pos);
        pos = to;
        if (this.skipped >= 65536) this.flushSkipped(); // a long run of garbage is told as it goes
        continue;
      }
      // varint length
      let len = 0;
      let shift = 0;
      let p = pos + MARKER_LEN;
      let complete = false;
      let bad = false;
      for (let i = 0; i < MAX_VARINT_LEN; i++) {
        if (p >= end) break;
        const b = buf[p++]!;
        len += (b & 0x7f) * 2 ** shift;
        shift += 7;
        if ((b & 0x80) === 0) {
          complete = true;
          break;
        }
        if (i === MAX_VARINT_LEN - 1) bad = true;
      }
      if (bad) {
        this.fail(ErrorCode.FRAME_BAD_LENGTH, 'frame length prefix is not a valid varint');
        pos += 1;
        continue;
      }
      if (!complete) break; // need more bytes for the length
      if (len === 0) {
        // Every message has a body; an empty frame is noise that happened to follow a marker.
        this.fail(ErrorCode.FRAME_BAD_LENGTH, 'zero-length frame');
        pos += 1;
        continue;
      }
      if (len > this.opts.maxFrameBytes) {
        this.fail(ErrorCode.FRAME_TOO_LARGE, `frame of ${len} bytes exceeds the maximum of ${this.opts.maxFrameBytes}`);
        pos += 1;
        continue;
      }
      const whole = p - pos + CRC_LEN + len;
      if (end - pos < whole) {
        need = whole; // incomplete frame: wait for the rest
        break;
      }
      const crc = buf.readUInt32LE(p);
      const payload = buf.subarray(p + CRC_LEN, p + CRC_LEN + len);
      if (crc32(payload) !== crc) {
        this.fail(ErrorCode.FRAME_CRC, `frame of ${len} bytes failed its CRC check`);
        pos += 1;
        continue;
      }
      this.flushSkipped();
      pos += whole;
      this.framesOk++;
      this.opts.onFrame(payload);
    }
    const rest = end - pos;
    if (rest === 0) {
      this.buf = EMPTY;
      this.partialSince = 0;
    } else if (need > 0) {
      this.frame = Buffer.allocUnsafe(need);
      this.filled = buf.copy(this.frame, 0, pos);
      this.buf = EMPTY;
      if (this.partialSince === 0 || pos > 0) this.partialSince = Date.now();
    } else {
      // Copy: keeping a view would pin the whole chunk behind a few bytes.
      this.buf = Buffer.from(buf.subarray(pos));
      if (this.partialSince === 0 || pos > 0) this.partialSince = Date.now();
    }
  }

  /**
   * Gives up on whatever incomplete frame is buffered (the stream stalled or ended in the
   * middle of one). Returns the number of bytes dropped.
   */
  discardPartial(reason: 'stalled' | 'ended'): number {
    let dropped = 0;
    // The held bytes start with a frame that never completed; complete frames may sit
    // behind it. Give up on the first one only, then look again from the byte after its marker.
    for (let guard = 0; guard < 1_000_000; guard++) {
      if (this.frame !== null) {
        this.buf = this.frame.subarray(0, this.filled);
        this.frame = null;
        this.filled = 0;
      }
      if (this.buf.length === 0) break;
      const held = this.buf;
      this.buf = EMPTY;
      this.partialSince = 0;
      if (this.markerAt(held, 0)) {
        const before = this.bytesSkipped;
        this.fail(ErrorCode.FRAME_TRUNCATED, `stream ${reason} inside a frame of which ${held.length} bytes had arrived`);
        this.push(held.subarray(1));
        dropped += 1 + (this.bytesSkipped - before);
      } else {
        this.skip(held.length);
        dropped += held.length;
      }
    }
    this.flushSkipped();
    return dropped;
  }

  private markerAt(buf: Buffer, pos: number): boolean {
    return buf[pos] === 0xf5 && buf[pos + 1] === 0x56 && buf[pos + 2] === 0x53 && buf[pos + 3] === 0x50;
  }

  private skip(n: number): void {
    this.skipped += n;
    this.bytesSkipped += n;
  }

  private flushSkipped(): void {
    if (this.skipped > 0) {
      const n = this.skipped;
      this.skipped = 0;
      if (!this.afterFailure) {
        this.errors++;
        this.opts.onError(new VesperError(ErrorCode.FRAME_GARBAGE, `skipped ${n} bytes that were not a frame`));
      }
    }
    this.afterFailure = false;
  }

  private fail(code: string, message: string): void {
    this.flushSkipped();
    this.errors++;
    this.afterFailure = true; // the bytes skipped next are this frame's, told here once
    this.opts.onError(new VesperError(code, message));
  }
}
