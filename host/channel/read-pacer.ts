// Read coalescing for many links at once, as a network card coalesces interrupts. With a
// thousand guests each sending a frame every 10 ms, a daemon that reads every socket the
// moment it turns readable reads each frame on its own: one wake-up, one read call and one
// trip into JavaScript per record, which alone cost about half a core (measured). When a turn
// of the event loop has read from many links, the pacer makes the next turn start no sooner
// than `windowMs` after this one began; the records that arrive meanwhile wait in the sockets
// and come in fewer, fuller reads. A turn that read from few links (a single guest, however
// busy: its socket already gathers its records while vesperd works) is never held back,
// so the added latency is only paid where it buys something: at most `windowMs`, under load.
//
// The wait blocks the thread (Atomics.wait): no timer can be that precise, and nothing is
// lost by it, since everything the loop would do meanwhile is what the pause is for.
//
// One pacer per daemon (vesperd makes it): its links' reads (AgentClient.connectUnix's
// `pacer`) count towards it, and its group commit (IngestBatcher) paces after each turn.

/** the longest a busy turn is stretched to, by default */
export const DEFAULT_COALESCE_MS = 20;
/** reads in one turn from which the next is paced */
export const DEFAULT_PACE_FROM_READS = 64;

/** what Atomics.wait waits on: nothing ever writes it */
const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

export class ReadPacer {
  /** 0: never pace */
  windowMs: number;
  fromReads = DEFAULT_PACE_FROM_READS;
  /**
   * The buffer every link of this daemon reads into (AgentClient.connectUnix). One is enough: a
   * read is handled to its end before the next begins, and nothing keeps a view into it past its
   * handling (the frame decoder copies an incomplete frame, the client copies a frame it keeps).
   */
  readonly readBuffer = Buffer.allocUnsafe(256 * 1024);
  /** reads since the last pace() */
  private reads = 0;
  /** when the current turn began (after the last pace) */
  private turnStartMs = performance.now();
  /** turns that were held back, and for how long in all */
  pauses = 0;
  pausedMs = 0;

  constructor(windowMs = DEFAULT_COALESCE_MS) {
    this.windowMs = windowMs;
  }

  /** One read from a link. */
  noteRead(): void {
    this.reads++;
  }

  /**
   * The end of a turn's work on what it read (the ingest commit): holds the thread until
   * `windowMs` after the turn began if the turn read from many links. `beforePause` runs first,
   * only when there will be a pause: whatever must not wait (handing events to subscribers).
   */
  pace(beforePause?: () => void): void {
    const now = performance.now();
    if (this.windowMs > 0 && this.reads >= this.fromReads) {
      const wait = this.turnStartMs + this.windowMs - now;
      if (wait >= 1) {
        beforePause?.();
        Atomics.wait(SLEEPER, 0, 0, wait);
        this.pauses++;
        this.pausedMs += wait;
      }
    }
    this.reads = 0;
    this.turnStartMs = performance.now();
  }
}
