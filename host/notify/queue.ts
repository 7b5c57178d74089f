// The framework's event queue: a bounded ring of published events, read by any number of
// subscribers (the CLI's `events -f`, API clients, the cluster bridge), each at its own pace.
//
// Publishing never waits for anyone and costs the same whether there is one subscriber or a
// thousand, slow or idle: it writes one slot and, once per burst, schedules a wake-up. A
// subscriber is only a cursor (a position in the stream); one that falls further behind than
// the ring holds loses the overwritten events, and is told how many on its next take — the
// loss is counted and visible, never silent, and never slows the others.
//
// Wake-ups are edge-triggered: a subscriber with an onReadable callback is called once when
// events arrive after it caught up, and not again until it takes. A take that leaves events
// behind schedules another call, so a reader that takes in small bites never stalls.
import type { VesperEvent } from './event.js';

// Small on purpose: the ring keeps every event it holds alive, and at 100,000 events a second
// a ring of 65,536 kept each one through the young generation's collections (copied, then
// promoted), which cost the ingest path about a tenth of its CPU (measured). vesperd's API
// followers that fall further behind read what they missed from the store (api-server.ts).
export const DEFAULT_QUEUE_CAPACITY = 8192;

export interface SubscribeOptions {
  /** start at the oldest event the ring still holds, instead of at the next one published */
  fromStart?: boolean;
  /** only these events are handed out (the others are skipped, still advancing the cursor) */
  match?: (ev: VesperEvent) => boolean;
}

export interface TakeResult {
  events: VesperEvent[];
  /**
   * Events overwritten before this subscriber took them, since its last take (told once). With
   * a match function it counts every lost event, matching or not: an upper bound.
   */
  missed: number;
}

export interface Subscription {
  /** what is new since the cursor, at most `max` (matching) events */
  take(max?: number): TakeResult;
  /** called (asynchronously, once per burst) when events arrive; replaces an earlier callback */
  onReadable(cb: (() => void) | null): void;
  close(): void;
  /** the position of the next event this subscriber will look at */
  readonly position: number;
  /** events published and not yet looked at (including any overwritten ones) */
  readonly pending: number;
  readonly closed: boolean;
  /** events handed out */
  readonly delivered: number;
  /** events lost to overwriting, over the subscription's life */
  readonly missedTotal: number;
}

export interface QueueOptions {
  capacity?: number;
  /** an onReadable callback threw; default: write it to stderr */
  onCallbackError?: (err: unknown) => void;
}

export class EventQueue {
  readonly capacity: number;
  private readonly ring: (VesperEvent | undefined)[];
  /** position of the next event published = events published so far */
  private head = 0;
  private readonly subs = new Set<Sub>();
  /** subscribers waiting for a wake-up: only these are visited when one is delivered */
  private readonly armed = new Set<Sub>();
  private wakeScheduled = false;
  private wakeImmediate: NodeJS.Immediate | null = null;
  private readonly onCallbackError: (err: unknown) => void;
  /**
   * Subscribers that want the events the filter discarded (`vesper events -f --all`): while
   * there is one, the framework publishes those too (with disposition 'discard'); otherwise
   * they are only stored.
   */
  discardedWanted = 0;
  /** subscriber entries visited while delivering wake-ups: the queue's only per-subscriber work */
  wakeVisits = 0;

  constructor(opts: QueueOptions = {}) {
    const capacity = opts.capacity ?? DEFAULT_QUEUE_CAPACITY;
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`queue capacity ${capacity} is not a whole number from 1`);
    this.capacity = capacity;
    this.ring = new Array<VesperEvent | undefined>(capacity).fill(undefined);
    this.onCallbackError = opts.onCallbackError ?? ((err) => console.error('vesper: event queue subscriber callback failed:', err));
  }

  /** Appends an event, overwriting the oldest when full; returns its position. O(1). */
  publish(ev: VesperEvent): number {
    const pos = this.head;
    this.ring[pos % this.capacity] = ev;
    this.head = pos + 1;
    if (!this.wakeScheduled && this.armed.size > 0) this.scheduleWake();
    return pos;
  }

  subscribe(opts: SubscribeOptions = {}): Subscription {
    const sub = new Sub(this, opts.fromStart ? this.oldest : this.head, opts.match ?? null);
    this.subs.add(sub);
    return sub;
  }

  /** events published so far = position of the next one */
  get published(): number {
    return this.head;
  }

  /** position of the oldest event still held */
  get oldest(): number {
    return this.head > this.capacity ? this.head - this.capacity : 0;
  }

  get size(): number {
    return this.head - this.oldest;
  }

  get subscribers(): number {
    return this.subs.size;
  }

  // --- for Sub ---

  /** @internal */ eventAt(pos: number): VesperEvent {
    return this.ring[pos % this.capacity]!;
  }

  /** @internal */ arm(sub: Sub): void {
    this.armed.add(sub);
    if (sub.position < this.head && !this.wakeScheduled) this.scheduleWake();
  }

  /** @internal */ disarm(sub: Sub): void {
    this.armed.delete(sub);
  }

  /** @internal */ remove(sub: Sub): void {
    this.subs.delete(sub);
    this.armed.delete(sub);
  }

  private scheduleWake(): void {
    this.wakeScheduled = true;
    // setImmediate rather than a microtask: records from several guests read in one poll phase
    // make one wake-up, not one per guest.
    this.wakeImmediate = setImmediate(() => this.wake());
  }

  /**
   * Calls the subscribers a scheduled wake-up would call, now. For the ingest path before it
   * holds the thread (read-pacer.ts): what was published must not wait for the pause.
   */
  wakeNow(): void {
    if (!this.wakeScheduled) return;
    if (this.wakeImmediate !== null) clearImmediate(this.wakeImmediate);
    this.wake();
  }

  private wake(): void {
    this.wakeScheduled = false;
    this.wakeImmediate = null;
    const ready: Sub[] = [];
    for (const sub of this.armed) {
      this.wakeVisits++;
      if (sub.position < this.head) ready.push(sub);
    }
    for (const sub of ready) {
      this.armed.delete(sub);
      const cb = sub.callback;
      if (cb === null || sub.closed) continue;
      try {
        cb();
      } catch (err) {
        this.onCallbackError(err);
      }
    }
  }
}

class Sub implements Subscription {
  callback: (() => void) | null = null;
  closed = false;
  delivered = 0;
  missedTotal = 0;

  constructor(
    private readonly q: EventQueue,
    public position: number,
    private readonly match: ((ev: VesperEvent) => boolean) | null,
  ) {}

  get pending(): number {
    return this.closed ? 0 : this.q.published - this.position;
  }

  take(max = Infinity): TakeResult {
    const events: VesperEvent[] = [];
    if (this.closed) return { events, missed: 0 };
    const q = this.q;
    let missed = 0;
    const oldest = q.oldest;
    if (this.position < oldest) {
      missed = oldest - this.position;
      this.missedTotal += missed;
      this.position = oldest;
    }
    const head = q.published;
    let pos = this.position;
    const match = this.match;
    while (pos < head && events.length < max) {
      const ev = q.eventAt(pos++);
      if (match === null || match(ev)) events.push(ev);
    }
    this.position = pos;
    this.delivered += events.length;
    // Taking re-arms the wake-up; if this take left events behind, the wake-up comes at once.
    if (this.callback !== null) q.arm(this);
    return { events, missed };
  }

  onReadable(cb: (() => void) | null): void {
    if (this.closed) return;
    this.callback = cb;
    if (cb === null) this.q.disarm(this);
    else this.q.arm(this);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.callback = null;
    this.q.remove(this);
  }
}
