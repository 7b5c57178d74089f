// Group commit: record batches from every guest gather for one turn of the event loop (or, in a
// long turn, a couple of milliseconds of it), go through the framework (filter, store, publish)
// in one store transaction, and only then is each guest told what it may drop from its ring. A
// crash before the commit loses nothing (the agents resend); a crash after it duplicates
// nothing (the store keeps a record once).
import type { ReadPacer } from '../channel/read-pacer.js';
import type { VesperEvent } from '../notify/event.js';

export interface IngestSink {
  ingest(events: VesperEvent[]): { stored: number; duplicates: number };
  /** hands what ingest published to its subscribers at once (before the read pacer pauses) */
  publishNow?(): void;
}

interface Pending {
  events: VesperEvent[];
  /** called after the commit, with the outcome */
  done: (err: Error | null) => void;
}

/**
 * A turn of reads with a thousand busy guests lasts 20 ms or more (read-pacer.ts); committing
 * only at its end held the first records read for all of it. Committed within the turn once the
 * oldest waiting record is this old, 1,000 simulated guests at 100 events/s measured p50 13-16
 * and p99 36-42 ms (2-3 ms) where the end-of-turn commit gave 26-29 and 65-75 ms, at no more CPU
 * (less: fewer records alive at once for the young generation's collections). The cost is
 * about 240 commits a second at that load, each a WAL fsync with store.sync 'full'.
 */
export const COMMIT_AFTER_MS = 2;

export class IngestBatcher {
  private pending: Pending[] = [];
  private pendingEvents = 0;
  private scheduled = false;
  /** when the oldest waiting push came (performance.now()) */
  private firstAt = 0;
  commits = 0;
  failures = 0;
  lastError: Error | null = null;

  constructor(
    private readonly sink: IngestSink,
    /** commit at once when this many events wait (bounds memory and latency under a flood) */
    private readonly maxEvents = 20_000,
    /** paces the reads of the next turn after a commit (read-pacer.ts; the daemon's); null: never */
    private readonly pacer: ReadPacer | null = null,
    /** commit at once, within a turn, when the oldest waiting event came this long ago (ms) */
    private readonly commitAfterMs = COMMIT_AFTER_MS,
  ) {}

  push(events: VesperEvent[], done: (err: Error | null) => void): void {
    const now = performance.now();
    if (this.pending.length === 0) this.firstAt = now;
    this.pending.push({ events, done });
    this.pendingEvents += events.length;
    if (this.pendingEvents >= this.maxEvents || now - this.firstAt >= this.commitAfterMs) {
      // Within the turn: what was read first is committed and handed on now, not after the
      // turn's last read.
      this.flush();
      this.sink.publishNow?.();
    } else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.endOfTurn());
    }
  }

  /** The commit after a poll phase's reads; then the pacer may hold the next turn back. */
  private endOfTurn(): void {
    this.scheduled = false;
    this.flush();
    this.pacer?.pace(() => this.sink.publishNow?.());
  }

  flush(): void {
    if (!this.pending.length) return;
    const batch = this.pending;
    this.pending = [];
    this.pendingEvents = 0;
    // A plain loop: flatMap was a measurable part of vesperd's CPU with a thousand guests.
    let all: VesperEvent[];
    if (batch.length === 1) all = batch[0]!.events;
    else {
      all = [];
      for (const p of batch) for (const e of p.events) all.push(e);
    }
    let err: Error | null = null;
    try {
      this.sink.ingest(all);
      this.commits++;
    } catch (e) {
      err = e as Error;
      this.failures++;
      this.lastError = err;
    }
    for (const p of batch) p.done(err);
  }
}
