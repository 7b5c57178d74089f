// What is left of the channel once the harder evidence has claimed its part: a link that
// broke and came back, a link that did not come back, a heartbeat gap, records the agent
// dropped. A heartbeat gap alone does not say whether the guest hung, the agent stalled or the
// host was slow: such verdicts are uncertain.
import { num, obj, str } from '../payload.js';
import type { Placed } from '../timeline.js';
import { runBefore, type RunInfo } from './agent-runs.js';
import { S, type Window, clock, draft, secs, type Draft } from './window.js';

/** What is left of the channel: a link that broke and came back to the same agent, a link that did not come back, a heartbeat gap. */
export function channelLeftovers(w: Window, runs: RunInfo[], out: Draft[]): void {
  for (const l of w.of('channel/agent-lost')) {
    if (w.claimed.has(l.id)) continue;
    const prev = runBefore(runs, l.timeUs);
    const back = w.near('channel/agent-connected', l.timeUs, Infinity, true)[0];
    if (back) {
      const samePid = prev && num(back.ev.payload['agentPid']) === prev.pid && str(back.ev.payload['bootId']) === prev.boot;
      // Records the guest made while the link was down (resent after it came back) show it lived.
      const lived =
        prev !== null &&
        w.all.some(
          (p) => p.ev.source?.agentRun === prev.run && p.ev.guestTimeUs !== null && p.timeUs > l.timeUs + S && p.timeUs < back.timeUs - S,
        );
      const d = draft(
        'channel-loss',
        'host',
        samePid && lived ? 'confident' : 'uncertain',
        l.timeUs,
        `The link to the agent broke at ${clock(l.timeUs)} (${str(l.ev.payload['why']) || 'no reason given'}) and came back ${secs(back.timeUs - l.timeUs)} later` +
          (samePid
            ? ` to the same agent (pid ${prev.pid})${lived ? ', which kept recording meanwhile: the channel failed, not the guest' : ': the agent lived; the guest may have stalled or the channel failed'}.`
            : '.'),
        { why: str(l.ev.payload['why']) || null },
      );
      w.claim(d, [l, back]);
      for (const k of ['channel/heartbeat-lost', 'channel/heartbeat-back']) w.claim(d, w.near(k, l.timeUs - 5 * S, back.timeUs + 5 * S));
      out.push(d);
    } else {
      const d = draft(
        'agent-fault',
        'guest',
        'uncertain',
        l.timeUs,
        `The link to the agent broke at ${clock(l.timeUs)} (${str(l.ev.payload['why']) || 'no reason given'}) and did not come back within the window, ` +
          'while the hypervisor reported nothing about the domain: the agent died or hung, or the whole guest hung; the evidence does not tell which.',
        { why: str(l.ev.payload['why']) || null },
      );
      w.claim(d, [l]);
      for (const k of ['channel/heartbeat-lost', 'channel/heartbeat-back']) w.claim(d, w.near(k, l.timeUs - 10 * S, Infinity));
      out.push(d);
    }
  }
  for (const h of w.of('channel/heartbeat-lost')) {
    if (w.claimed.has(h.id)) continue;
    const back = w.near('channel/heartbeat-back', h.timeUs, Infinity)[0];
    const silentMs = num(back?.ev.payload['silentMs']);
    const prev = runBefore(runs, h.timeUs);
    const resumed =
      back !== undefined && prev !== null && w.all.some((p) => p.ev.source?.agentRun === prev.run && p.timeUs >= back.timeUs - S);
    const d = draft(
      'guest-hang',
      'guest',
      'uncertain',
      h.timeUs,
      `Heartbeats stopped at ${clock(h.timeUs)}` +
        (silentMs !== undefined ? ` for ${secs(silentMs * 1000)}` : ' and had not come back by the end of the window') +
        ` while the hypervisor reported the domain running${resumed ? ' and the same agent resumed afterwards' : ''}. ` +
        'Only the heartbeat gap says so: the guest may have hung, or only the agent stalled, or the host starved the guest.',
      { silentMs: silentMs ?? null, resumed },
    );
    w.claim(d, [h, ...(back ? [back] : [])]);
    out.push(d);
  }
  const lost = w.of('channel/records-lost').filter((p) => !w.claimed.has(p.id));
  if (lost.length) {
    const count = lost.reduce((n, p) => n + (num(obj(p.ev.payload['loss'])['count']) ?? 0), 0);
    const d = draft(
      'channel-loss',
      'guest',
      'confident',
      (lost[0] as Placed).timeUs,
      `The agent dropped ${count} record${count === 1 ? '' : 's'} (${lost.length} loss report${lost.length === 1 ? '' : 's'}, from ${clock((lost[0] as Placed).timeUs)}): ` +
        'this timeline misses guest events around then.',
      { records: count },
    );
    w.claim(d, lost);
    out.push(d);
  }
}
