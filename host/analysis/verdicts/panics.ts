// The guest kernel panicked or the domain crashed: libvirt's word (pvpanic's panicked, crashed),
// the hardest evidence a window holds. It claims the channel's silence around it, a watchdog
// that fired as the kernel died, and the restart that followed.
import { obj, str } from '../payload.js';
import { task, type Placed } from '../timeline.js';
import { CHANNEL_SILENCE, S, type Window, clock, clusters, draft, type Draft } from './window.js';

/** Guest kernel panic: libvirt's panicked (pvpanic) and crashed, with the silence they cause. */
export function panics(w: Window, out: Draft[]): void {
  const evs = [...w.of('libvirt/panicked'), ...w.of('libvirt/crashed')].sort((a, b) => a.timeUs - b.timeUs);
  for (const group of clusters(evs, 30 * S)) {
    const first = group[0] as Placed;
    const last = group.at(-1) as Placed;
    const reasons = group.map((p) => [str(p.ev.payload['event']), str(p.ev.payload['reason'])].filter(Boolean).join(' ')).filter(Boolean);
    const panicked = group.some((p) => p.ev.event === 'panicked' || /panic/i.test(str(p.ev.payload['reason'])));
    const d = draft(
      'guest-panic',
      'guest',
      'confident',
      first.timeUs,
      panicked
        ? `The guest kernel panicked at ${clock(first.timeUs)} (libvirt: ${reasons.join('; ') || 'panicked'}): the whole guest went down.`
        : `The domain crashed at ${clock(first.timeUs)} (libvirt: ${reasons.join('; ') || 'crashed'}): the whole guest went down.`,
      { libvirt: reasons },
    );
    w.claim(d, group);
    // What the crash silenced, and a watchdog that fired as the kernel died.
    for (const k of [...CHANNEL_SILENCE, 'libvirt/stopped', 'libvirt/watchdog'])
      w.claim(d, w.near(k, first.timeUs - 10 * S, last.timeUs + 60 * S));
    // Only an OOM of the whole guest can have brought the kernel down (panic_on_oom); one held
    // to a cgroup's limit (CONSTRAINT_MEMCG) is that cgroup's business, and gets its own verdict.
    const oom = w
      .near('oom/oom_kill', first.timeUs - 10 * S, first.timeUs, true)
      .filter((p) => str(obj(p.ev.payload['oom'])['constraint']) !== 'CONSTRAINT_MEMCG');
    if (oom.length) {
      d.details['oomBefore'] = oom.map((p) => task(obj(p.ev.payload['oom'])['victim']));
      d.summary += ` The OOM killer ran just before (${(d.details['oomBefore'] as string[]).join(', ')}): memory exhaustion may have led to it.`;
      w.claim(d, oom);
    }
    claimRestart(w, d, last.timeUs);
    out.push(d);
  }
}

/**
 * The domain started again after it went down, and the agent of its new boot: consequences of
 * the verdict (an operator's or a cluster's restart), not a reboot of their own.
 */
export function claimRestart(w: Window, d: Draft, downUs: number): void {
  const started = w.near('libvirt/started', downUs, downUs + 600 * S)[0];
  if (!started) return;
  d.details['startedAgainUs'] = started.timeUs;
  w.claim(d, [started]);
  const hello = w.near('channel/agent-connected', started.timeUs, started.timeUs + 300 * S)[0];
  if (hello) w.claim(d, [hello]);
}
