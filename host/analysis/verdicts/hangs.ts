// The guest's watchdog fired: it is fed from guest userspace, so userspace hung while the
// domain kept running. The hang claims only the silence left once a new agent run has
// claimed its own (agentFaults runs first).
import { num, str } from '../payload.js';
import type { Placed } from '../timeline.js';
import { S, type Window, clock, clusters, draft, secs, type Draft } from './window.js';

/** The watchdog, fed from guest userspace, fired: userspace hung while the domain ran. */
export function hangs(w: Window, out: Draft[]): void {
  for (const group of clusters(
    w.of('libvirt/watchdog').filter((p) => !w.claimed.has(p.id)),
    60 * S,
  )) {
    const first = group[0] as Placed;
    const end = (group.at(-1) as Placed).timeUs;
    const d = draft('guest-hang', 'guest', 'confident', first.timeUs, '', { action: str(first.ev.payload['action']) || null });
    w.claim(d, group);
    const lost = w.near('channel/heartbeat-lost', first.timeUs - 30 * S, end + 30 * S);
    w.claim(d, lost);
    const from = Math.min(first.timeUs, ...lost.map((p) => p.timeUs));
    const back = w.near('channel/heartbeat-back', from, end + 600 * S)[0];
    if (back) w.claim(d, [back]);
    // The link may drop while the guest cannot answer; it comes back to the same agent.
    w.claim(d, w.near('channel/agent-lost', from - 5 * S, (back?.timeUs ?? end) + 5 * S));
    const silentMs = num(back?.ev.payload['silentMs']);
    d.details['silentMs'] = silentMs ?? null;
    d.atUs = from;
    d.summary =
      `Guest userspace hung from about ${clock(from)}: the watchdog, fed from userspace, fired (action ${str(first.ev.payload['action']) || '?'})` +
      `${lost.length ? ' and heartbeats stopped' : ''} while the domain kept running` +
      `${silentMs !== undefined ? `; heartbeats came back after ${secs(silentMs * 1000)}` : back ? '' : '; heartbeats had not come back by the end of the window'}.`;
    out.push(d);
  }
}
