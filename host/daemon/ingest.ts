// Group commit: record batches from every guest gather for one turn of the event loop, go
// through the framework (filter, store, publish) in one store transaction, and only then is
// each guest told what it may drop from its ring. A crash before the commit loses nothing (the
// agents resend); a crash after it duplicates nothing (the store keeps a record once).
import { readPacer, type ReadPacer } from '../channel/read-pacer.js';
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

export class IngestBatcher {
  private pending: Pending[] = [];
  private pendingEvents = 0;
  private scheduled = false;
  commits = 0;
  failures = 0;
  lastError: Error | null = null;

  constructor(
    private readonly sink: IngestSink,
    /** commit at once when this many events wait (bounds memory and latency under a flood) */
    private readonly maxEvents = 20_000,
    /** paces the reads of the next turn after a commit (read-pacer.ts); null: never */
    private readonly pacer: ReadPacer | null = readPacer,
  ) {}

  push(events: VesperEvent[], done: (err: Error | null) => void): void {
    this.pending.push({ events, done });
    this.pendingEvents += events.length;
    if (this.pendingEvents >= this.maxEvents) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.endOfTurn());
    }
  }

  /** The commit after a poll phase's reads; then the pacer may hold the next turn back. */
  private endOfTurn(): void {
    this.flush();
    this.pacer?.pace(() => this.sink.publishNow?.());
  }

  flush(): void {
    this.scheduled = false;
    if (!this.pending.length) return;
    const batch = this.pending;
    this.pending = [];
    this.pendingEvents = 0;
    // A plain loop: flatMap was a measurable part of the manager's CPU with a thousand guests.
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
