// The agent's record ring: every record the probes emit, numbered, encoded once, and kept
// until the host acknowledges it.
//
// All memory is allocated when the agent starts (one byte arena plus index arrays), so a
// guest short of memory cannot stop the agent from recording the very failure it is in.
// When the ring is full the agent does not block and does not overwrite unacknowledged
// records: it drops the new record and counts it. As soon as there is room again the count
// goes out as a loss record of its own, so loss is always visible at the host.
import '../../proto/pb.js';
import { v1, type pb } from '../../proto/codec.js';
import { FastEncoder } from '../../proto/fast-encode.js';

const LOSS_RECORD_RESERVE = 96; // bytes kept free for the loss record itself

export interface RingStats {
  capacityRecords: number;
  capacityBytes: number;
  records: number;
  bytes: number;
  firstSeq: number;
  lastSeq: number;
  sentSeq: number;
  dropped: number;
  lossRecords: number;
}

export class RecordRing {
  private readonly arena: Buffer;
  private readonly offsets: Uint32Array;
  private readonly lengths: Uint32Array;
  private head = 0; // slot of the oldest record
  private count = 0;
  private writePos = 0; // arena offset where the next record goes
  private readPos = 0; // arena offset of the oldest record
  private used = 0; // arena bytes in use, including wasted tail space
  private nextSeq = 1;
  private sent = 0; // highest seq handed to the transport on this link
  private pendingLoss = 0;
  private lossFirstNs = 0;
  private lossLastNs = 0;
  droppedTotal = 0;
  lossRecords = 0;
  private readonly writer = new FastEncoder('Record');

  constructor(
    readonly capacityRecords: number,
    readonly capacityBytes: number,
    private readonly clock: () => { mono: number; wall: number },
  ) {
    this.arena = Buffer.alloc(capacityBytes);
    this.offsets = new Uint32Array(capacityRecords);
    this.lengths = new Uint32Array(capacityRecords);
  }

  get firstSeq(): number {
    return this.nextSeq - this.count;
  }
  get lastSeq(): number {
    return this.nextSeq - 1;
  }
  get size(): number {
    return this.count;
  }
  /** Records stored but not yet handed to the transport. */
  get unsent(): number {
    return this.lastSeq - Math.max(this.sent, this.firstSeq - 1);
  }

  /**
   * Numbers, encodes and stores a record. Returns its sequence number, or 0 if the ring was
   * full and the record was counted as lost.
   */
  append(rec: pb.IRecord): number {
    // While records are being dropped, the loss record goes in first, and only once there
    // is room for it and for this record: otherwise one loss would be told in pieces.
    if (this.pendingLoss > 0) {
      if (
        this.count + 2 > this.capacityRecords ||
        this.used + 2 * LOSS_RECORD_RESERVE + this.writer.encode(rec).length > this.capacityBytes
      )
        return this.drop(rec);
      if (!this.flushLoss()) return this.drop(rec);
    }
    return this.store(rec, LOSS_RECORD_RESERVE) || this.drop(rec);
  }

  /** Drops everything up to and including seq: the host holds it. */
  ack(seq: number): void {
    while (this.count > 0 && this.firstSeq <= seq) {
      const len = this.lengths[this.head]!;
      const off = this.offsets[this.head]!;
      // Space between readPos and off is tail waste left by a wrap.
      const freed = off >= this.readPos ? off - this.readPos + len : this.capacityBytes - this.readPos + off + len;
      this.used -= freed;
      this.readPos = off + len;
      this.head = (this.head + 1) % this.capacityRecords;
      this.count--;
    }
    if (this.count === 0) {
      this.used = 0;
      this.readPos = this.writePos = 0;
    }
    if (this.pendingLoss > 0) this.flushLoss();
  }

  /** A new link: everything not acknowledged goes out again. */
  rewind(): void {
    this.sent = this.firstSeq - 1;
  }

  /**
   * Hands out the next records to send, at most maxRecords and about maxBytes of encoded
   * data, as views into the arena (valid until the next append or ack).
   */
  takeUnsent(maxRecords: number, maxBytes: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let seq = Math.max(this.sent + 1, this.firstSeq);
    let bytes = 0;
    while (seq <= this.lastSeq && out.length < maxRecords) {
      const slot = (this.head + (seq - this.firstSeq)) % this.capacityRecords;
      const len = this.lengths[slot]!;
      if (out.length > 0 && bytes + len > maxBytes) break;
      const off = this.offsets[slot]!;
      out.push(this.arena.subarray(off, off + len));
      bytes += len;
      seq++;
    }
    this.sent = seq - 1;
    return out;
  }

  stats(): RingStats {
    return {
      capacityRecords: this.capacityRecords,
      capacityBytes: this.capacityBytes,
      records: this.count,
      bytes: this.used,
      firstSeq: this.firstSeq,
      lastSeq: this.lastSeq,
      sentSeq: this.sent,
      dropped: this.droppedTotal,
      lossRecords: this.lossRecords,
    };
  }

  private drop(rec: pb.IRecord): number {
    const ns = typeof rec.monoNs === 'number' ? rec.monoNs : this.clock().mono;
    if (this.pendingLoss === 0) this.lossFirstNs = ns;
    this.lossLastNs = ns;
    this.pendingLoss++;
    this.droppedTotal++;
    return 0;
  }

  private flushLoss(): boolean {
    const c = this.clock();
    const seq = this.store(
      {
        monoNs: c.mono,
        wallNs: c.wall,
        handle: 0,
        eventId: 0,
        loss: {
          source: v1.LossEvent.Source.AGENT_RING,
          count: this.pendingLoss,
          firstMonoNs: this.lossFirstNs,
          lastMonoNs: this.lossLastNs,
        },
      },
      0,
    );
    if (!seq) return false;
    this.pendingLoss = 0;
    this.lossRecords++;
    return true;
  }

  private store(rec: pb.IRecord, reserve: number): number {
    if (this.count >= this.capacityRecords - (reserve ? 1 : 0)) return 0;
    rec.seq = this.nextSeq;
    const bytes = this.writer.encode(rec);
    const len = bytes.length;
    let at = this.writePos;
    let waste = 0;
    let wrapped = false;
    if (at + len > this.capacityBytes) {
      waste = this.capacityBytes - at; // wrap: the tail is left unused
      at = 0;
      wrapped = true;
    }
    if (this.used + waste + len + reserve > this.capacityBytes) return 0;
    if (wrapped && this.count > 0 && len > this.readPos) return 0;
    this.arena.set(bytes, at);
    const slot = (this.head + this.count) % this.capacityRecords;
    this.offsets[slot] = at;
    this.lengths[slot] = len;
    this.writePos = at + len;
    this.used += waste + len;
    this.count++;
    this.nextSeq++;
    return rec.seq;
  }
}
