// A guest's ingest budget: how many bytes and records a second the manager reads from one
// link. vesperd is one thread for every guest; without a budget, one guest sending as fast as
// its link takes can keep that thread to itself. A link over its budget is not read for a while
// (its socket paused): the guest's writes block and its records wait in its own ring, which
// keeps them until they are acknowledged, so nothing acknowledged is ever dropped; what the
// ring cannot hold the agent counts and reports as a loss.
//
// Two token buckets, bytes and records, each refilled at its rate and holding at most `burstMs`
// of it. A read is charged after it was handled (its size is only known then); a bucket below
// zero says how long until it is back at zero, and the link stays paused that long.

export interface IngestBudgetOptions {
  /** bytes a second (0: no limit) */
  bytesPerS: number;
  /** records a second (0: no limit) */
  recordsPerS: number;
  /** how much unused budget a guest may save up, in ms of its rates (default 1000) */
  burstMs?: number;
}

export class IngestBudget {
  private bytes: number;
  private records: number;
  private at: number;
  private readonly burstMs: number;

  constructor(
    readonly o: IngestBudgetOptions,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.burstMs = o.burstMs ?? 1000;
    this.bytes = (o.bytesPerS * this.burstMs) / 1000;
    this.records = (o.recordsPerS * this.burstMs) / 1000;
    this.at = this.now();
  }

  /** A budget that limits nothing. */
  get unlimited(): boolean {
    return this.o.bytesPerS <= 0 && this.o.recordsPerS <= 0;
  }

  /** Charges one read; returns how long (ms) the link must wait before the next, 0 if none. */
  charge(bytes: number, records: number): number {
    const now = this.now();
    const dt = now - this.at;
    this.at = now;
    let wait = 0;
    if (this.o.bytesPerS > 0) {
      const cap = (this.o.bytesPerS * this.burstMs) / 1000;
      this.bytes = Math.min(cap, this.bytes + (dt * this.o.bytesPerS) / 1000) - bytes;
      if (this.bytes < 0) wait = Math.max(wait, (-this.bytes * 1000) / this.o.bytesPerS);
    }
    if (this.o.recordsPerS > 0) {
      const cap = (this.o.recordsPerS * this.burstMs) / 1000;
      this.records = Math.min(cap, this.records + (dt * this.o.recordsPerS) / 1000) - records;
      if (this.records < 0) wait = Math.max(wait, (-this.records * 1000) / this.o.recordsPerS);
    }
    return wait;
  }
}
