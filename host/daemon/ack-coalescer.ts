// Acks are coalesced: every link's go out together, at most once every ACK_EVERY_MS, or at once
// when a link has ACK_AT_RECORDS stored and not yet acknowledged. The agent keeps what is not yet
// acknowledged (its ring holds 65,536 records by default), so a later ack costs ring space, never
// records. With 1,000 busy guests, acks every 20 ms cost the daemon about a fifth of its CPU
// (measured), every 100 ms 2.4 % of its profile samples. One coalescer per daemon, shared by
// its links (GuestLinkDeps.acks).

export const ACK_EVERY_MS = 250;
export const ACK_AT_RECORDS = 8192;

/** A link that acknowledges what is stored when told to. */
export interface AckSender {
  sendAck(): void;
}

export class AckCoalescer {
  /** links with stored records to acknowledge */
  private readonly due = new Set<AckSender>();
  /** the one timer that will acknowledge them */
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly everyMs = ACK_EVERY_MS) {}

  /** `link` acknowledges at the next tick, with every other link due. */
  soon(link: AckSender): void {
    this.due.add(link);
    if (this.timer === null) this.timer = setTimeout(this.tick, this.everyMs);
  }

  /** `link` acknowledged by itself (or stopped): not due any more. */
  drop(link: AckSender): void {
    this.due.delete(link);
  }

  /** No tick to come (the daemon stops). */
  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.due.clear();
  }

  /** one function for every tick: no closure per timer */
  private readonly tick = (): void => {
    this.timer = null;
    const links = [...this.due];
    this.due.clear();
    for (const l of links) l.sendAck();
  };
}
