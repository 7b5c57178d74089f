// Acks are coalesced: every link's go out together, at most once every ACK_EVERY_MS, or at once
// when a link has ACK_AT_RECORDS stored and not yet acknowledged. A link with only a trickle
// unacknowledged (fewer than IDLE_ACK_BELOW_RECORDS: an agent at rest, its heartbeats) waits
// IDLE_ACK_MS instead: each ack wakes the agent in its guest, and at rest that was one wake-up
// a second for nothing the ring needed. The agent keeps what is not yet
// acknowledged (its ring holds 65,536 records by default), so a later ack costs ring space, never
// records. With 1,000 busy guests, acks every 20 ms cost the daemon about a fifth of its CPU
// (measured), every 100 ms 2.4 % of its profile samples. One coalescer per daemon, shared by
// its links (GuestLinkDeps.acks).

import { IDLE_ACK_MS } from '../channel/agent-client.js';

export const ACK_EVERY_MS = 250;
export const ACK_AT_RECORDS = 8192;
export { IDLE_ACK_BELOW_RECORDS } from '../channel/agent-client.js';

/** A link that acknowledges what is stored when told to. */
export interface AckSender {
  sendAck(): void;
}

export class AckCoalescer {
  /** links with stored records to acknowledge */
  private readonly due = new Set<AckSender>();
  /** links with a trickle to acknowledge */
  private readonly idle = new Set<AckSender>();
  /** the one timer that will acknowledge the due ones, and the one for the idle ones */
  private timer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly everyMs = ACK_EVERY_MS,
    private readonly idleMs = IDLE_ACK_MS,
  ) {}

  /** `link` acknowledges at the next tick, with every other link due. */
  soon(link: AckSender): void {
    this.idle.delete(link);
    this.due.add(link);
    if (this.timer === null) this.timer = setTimeout(this.tick, this.everyMs);
  }

  /** `link` has a trickle to acknowledge: at the next idle tick, unless more makes it due sooner. */
  later(link: AckSender): void {
    if (this.due.has(link)) return;
    this.idle.add(link);
    if (this.idleTimer === null) this.idleTimer = setTimeout(this.idleTick, this.idleMs);
  }

  /** `link` acknowledged by itself (or stopped): not due any more. */
  drop(link: AckSender): void {
    this.due.delete(link);
    this.idle.delete(link);
  }

  /** No tick to come (the daemon stops). */
  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.timer = null;
    this.idleTimer = null;
    this.due.clear();
    this.idle.clear();
  }

  /** one function for every tick: no closure per timer */
  private readonly tick = (): void => {
    this.timer = null;
    const links = [...this.due];
    this.due.clear();
    for (const l of links) l.sendAck();
  };

  private readonly idleTick = (): void => {
    this.idleTimer = null;
    const links = [...this.idle];
    this.idle.clear();
    for (const l of links) l.sendAck();
  };
}
