// Planned stops of the whole guest: the domain stopped, shut down or rebooted without a crash
// (an operator, a tool, vesper's own action, the guest itself). The signals PID 1 sends as the
// guest shuts down belong to that stop (plannedShutdown), not to a failure of each service.
// When the agent said, as systemd stopped it, that the guest was shutting down (channel
// agent-stopping, systemState "stopping"), everything from then to the stop is the shutdown's:
// the stop signals anyone sent, the deaths they caused, the silence of the link.
import { num, obj, str } from '../payload.js';
import type { Placed } from '../timeline.js';
import { runBefore, runOfHello, type RunInfo } from './agent-runs.js';
import { claimRestart } from './panics.js';
import { CHANNEL_SILENCE, S, type Window, clock, clusters, draft, secs, type Draft } from './window.js';

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
    const from = shutdownBegan(w, d, p.timeUs);
    for (const k of CHANNEL_SILENCE) w.claim(d, w.near(k, Math.min(from, p.timeUs) - 5 * S, p.timeUs + 30 * S));
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
    const from = Math.min(shutdownBegan(w, d, first.timeUs), first.timeUs);
    for (const k of [...CHANNEL_SILENCE, 'channel/agent-connected']) w.claim(d, w.near(k, from - 5 * S, end + 10 * S));
    out.push(d);
  }
  agentStops(w, out);
}

/** How long before the guest stopped the agent's word that it was shutting down may come. */
const SHUTDOWN_SAID_WITHIN = 600 * S;
/**
 * systemd starts every unit's stop job at once as the guest goes down; the agent's own is one of
 * them and its record is made when its SIGTERM handler runs, a little after the others began.
 */
const SHUTDOWN_LEAD = 15 * S;

/**
 * How long before the guest stopped an agent's word without systemd's state may still be the
 * shutdown's: PID 1, busy stopping a guest, sometimes answers the agent only after it has exited
 * (and a guest without systemd has no state to give). The agent stopped, none linked again, and
 * the guest went down soon after: its stop was the shutdown's.
 */
const UNKNOWN_STATE_SAID_WITHIN = 180 * S;

/** agent-stopping's systemd state ('stopping' while the guest shuts down). */
function systemStateOf(p: Placed): string {
  return str(obj(p.ev.payload['agentStopping'])['systemState']);
}

/**
 * The agent's word, before the guest stopped at stopUs, that the guest was shutting down: the
 * shutdown then began at it (d.details.shutdownFromUs), and the word is claimed by d. Returns
 * when it began, or Infinity when the agent said nothing of it.
 */
function shutdownBegan(w: Window, d: Draft, stopUs: number): number {
  const said = w.near('channel/agent-stopping', stopUs - SHUTDOWN_SAID_WITHIN, stopUs + S, true).filter((p) => {
    if (w.claimed.has(p.id)) return false;
    const state = systemStateOf(p);
    if (state === 'stopping') return true;
    return (
      state === '' &&
      stopUs - p.timeUs <= UNKNOWN_STATE_SAID_WITHIN &&
      w.near('channel/agent-connected', p.timeUs, stopUs, true).length === 0
    );
  });
  const first = said[0];
  if (!first) return Infinity;
  w.claim(d, said);
  d.details['shutdownFromUs'] = first.timeUs;
  // 'systemd': systemd said it was stopping; 'agent-stopped': the agent stopped without systemd's
  // state, none linked again, and the guest went down within UNKNOWN_STATE_SAID_WITHIN
  d.details['shutdownKnownBy'] = systemStateOf(first) === 'stopping' ? 'systemd' : 'agent-stopped';
  return first.timeUs;
}

/**
 * The guest stop whose shutdown the moment t lies in: from a little before the agent said the
 * guest was shutting down to the stop itself. Null without the agent's word.
 */
export function duringShutdown(out: Draft[], t: number): Draft | null {
  return (
    out.find((d) => {
      const from = num(d.details['shutdownFromUs']);
      return d.kind === 'guest-stopped' && from !== undefined && t >= from - SHUTDOWN_LEAD && t <= d.atUs + S;
    }) ?? null
  );
}

/**
 * The agent was stopped with the guest running (an operator, a package upgrade): planned. The
 * silence of the link until an agent links again is that stop's, not a hang or an agent fault.
 */
function agentStops(w: Window, out: Draft[]): void {
  for (const p of w.of('channel/agent-stopping')) {
    if (w.claimed.has(p.id)) continue;
    const a = obj(p.ev.payload['agentStopping']);
    const state = systemStateOf(p);
    const back = w.near('channel/agent-connected', p.timeUs, Infinity, true)[0];
    const d = draft(
      'planned-stop',
      'guest',
      'confident',
      p.timeUs,
      `The agent was told to stop (${str(a['signal']) || 'a signal'}) at ${clock(p.timeUs)}` +
        (state === 'stopping' ? ' as the guest shut down' : state ? ` with the guest ${state}` : '') +
        `: planned (an operator or a package upgrade${state === 'stopping' ? ', or the shutdown' : ''}), not a failure; ` +
        (back ? `an agent linked again ${secs(back.timeUs - p.timeUs)} later.` : 'no agent linked again within the window.'),
      { signal: str(a['signal']) || null, systemState: state || null },
    );
    w.claim(d, [p]);
    for (const k of CHANNEL_SILENCE) w.claim(d, w.near(k, p.timeUs - S, (back?.timeUs ?? Infinity) + 5 * S));
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
