// Planned stops of the whole guest: the domain stopped, shut down or rebooted without a crash
// (an operator, a tool, vesper's own action, the guest itself). The signals PID 1 sends as the
// guest shuts down belong to that stop (plannedShutdown), not to a failure of each service.
import { num, obj, str } from '../payload.js';
import type { Placed } from '../timeline.js';
import { runBefore, runOfHello, type RunInfo } from './agent-runs.js';
import { claimRestart } from './panics.js';
import { CHANNEL_SILENCE, S, type Window, clock, clusters, draft, type Draft } from './window.js';

/** Planned stops and reboots of the whole guest (not crashes). */
export function stopsAndReboots(w: Window, runs: RunInfo[], out: Draft[]): void {
  for (const p of [...w.of('libvirt/stopped'), ...w.of('libvirt/shutdown')]) {
    if (w.claimed.has(p.id)) continue;
    const reason = [str(p.ev.payload['event']), str(p.ev.payload['reason'])].filter(Boolean).join(' ');
    const action = w.all.find(
      (a) =>
        a.ev.plugin === 'action' &&
        a.timeUs <= p.timeUs + 5 * S &&
        a.timeUs >= p.timeUs - 120 * S &&
        /restart|failover|fence|stop/i.test(str(a.ev.payload['action'])),
    );
    const by = action
      ? `vesper's ${str(action.ev.payload['action'])} action (for event ${num(obj(action.ev.payload['cause'])['id']) ?? '?'})`
      : p.ev.event === 'shutdown'
        ? 'a shutdown from inside the guest or an operator'
        : 'an operator, a tool or the host';
    const d = draft(
      'guest-stopped',
      'guest',
      'confident',
      p.timeUs,
      `The domain ${p.ev.event === 'shutdown' ? 'shut down' : 'stopped'} at ${clock(p.timeUs)} (libvirt: ${reason || p.ev.event}), by ${by}: planned, not a crash.`,
      { reason },
    );
    w.claim(d, [p, ...(action ? [action] : [])]);
    w.claim(d, w.near('libvirt/shutdown', p.timeUs - 10 * S, p.timeUs + 10 * S));
    for (const k of CHANNEL_SILENCE) w.claim(d, w.near(k, p.timeUs - 5 * S, p.timeUs + 30 * S));
    claimRestart(w, d, p.timeUs);
    out.push(d);
  }
  // A reboot: libvirt's word, or an agent of a new boot.
  const reboots: Placed[] = [...w.of('libvirt/rebooted').filter((p) => !w.claimed.has(p.id))];
  for (const c of w.of('channel/agent-connected')) {
    const prev = runBefore(runs, c.timeUs, runOfHello(c));
    const boot = str(c.ev.payload['bootId']);
    // A new boot right after the domain was started is that start's, not a reboot.
    const fresh = w.near('libvirt/started', c.timeUs - 300 * S, c.timeUs, true).length > 0;
    if (prev && boot && prev.boot !== boot && !fresh && !w.claimed.has(c.id)) reboots.push(c);
  }
  reboots.sort((a, b) => a.timeUs - b.timeUs);
  for (const group of clusters(reboots, 180 * S)) {
    const first = group[0] as Placed;
    const libvirt = group.some((p) => p.ev.plugin === 'libvirt');
    const d = draft(
      'guest-stopped',
      'guest',
      'confident',
      first.timeUs,
      `The guest rebooted at ${clock(first.timeUs)} (${libvirt ? 'libvirt reported the reboot' : 'the agent came back with a new boot id'}), ` +
        'without a kernel panic: a reboot from inside the guest or by an operator.',
      { rebooted: true },
    );
    w.claim(d, group);
    const end = (group.at(-1) as Placed).timeUs;
    for (const k of [...CHANNEL_SILENCE, 'channel/agent-connected']) w.claim(d, w.near(k, first.timeUs - 5 * S, end + 10 * S));
    out.push(d);
  }
}

/**
 * The guest's shutdown or reboot this signal was part of: sent by PID 1 (the service manager
 * stopping every unit, then systemd-shutdown killing what is left) within 2 min before the
 * guest went down.
 */
export function plannedShutdown(out: Draft[], p: Placed, senderPid: number): Draft | null {
  if (senderPid !== 1) return null;
  return out.find((d) => d.kind === 'guest-stopped' && d.atUs >= p.timeUs - S && d.atUs <= p.timeUs + 120 * S) ?? null;
}
