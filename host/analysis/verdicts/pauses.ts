// The host stopped the guest's clock: libvirt paused, saved, snapshotted or migrated the domain
// (vesperd's channel plugin says watch-held / watch-resumed; libvirt says suspended, stopped
// Saved, started Restored, resumed). A guest that does not run cannot beat: the silence, a link
// its QEMU closed, the same agent linking again after a restore, all belong to the pause and are
// never a hang or an agent fault.
import { num, str } from '../payload.js';
import { HELD_WHY, type Placed } from '../timeline.js';
import { S, type Window, clock, draft, secs, type Draft } from './window.js';

/** libvirt lifecycle details that are part of a hold (the domain is kept, not ended or booted). */
const KEPT_STOPS = new Set(['Saved', 'Migrated', 'Snapshot']);
const KEPT_STARTS = new Set(['Restored', 'Migrated', 'Snapshot']);

/** Pauses, saves, snapshots and migrations by the host, with the silence they caused. */
export function hostPauses(w: Window, out: Draft[]): void {
  const starts: Placed[] = [...w.of('channel/watch-held')];
  // A pause vesperd did not hold (an older vesperd, a store from elsewhere): libvirt's word alone.
  for (const s of w.of('libvirt/suspended'))
    if (!starts.some((h) => Math.abs(h.timeUs - s.timeUs) <= 5 * S) && !w.claimed.has(s.id)) starts.push(s);
  starts.sort((a, b) => a.timeUs - b.timeUs);
  let lastEnd = -Infinity;
  for (const start of starts) {
    if (w.claimed.has(start.id) || start.timeUs < lastEnd) continue;
    const held = start.ev.plugin === 'channel';
    const end = held
      ? w.near('channel/watch-resumed', start.timeUs, Infinity, true)[0]
      : w.near('libvirt/resumed', start.timeUs, Infinity, true)[0];
    const endUs = end?.timeUs ?? Infinity;
    lastEnd = endUs;
    const suspended = held ? w.near('libvirt/suspended', start.timeUs - 5 * S, start.timeUs) : [];
    const fromUs = Math.min(start.timeUs, ...suspended.map((p) => p.timeUs));
    // The resume's why when the hold's was only 'paused' (a job told the operation meanwhile).
    const heldWhy = held ? str(start.ev.payload['why']) || 'paused' : 'paused';
    const endWhy = str(end?.ev.payload['why']);
    const why = heldWhy === 'paused' && endWhy ? endWhy : heldWhy;
    const graceUs = (num(end?.ev.payload['graceMs']) ?? 10_000) * 1000;
    const d = draft('host-paused', 'host', 'confident', fromUs, '', { why, heldMs: end ? Math.round((endUs - fromUs) / 1000) : null });
    w.claim(d, [start, ...suspended, ...(end ? [end] : [])]);
    // libvirt's own story of it: resumed, stopped Saved/Migrated, started Restored, job events.
    const upto = endUs + 5 * S;
    w.claim(d, w.near('libvirt/resumed', fromUs, upto));
    w.claim(
      d,
      w.near('libvirt/stopped', fromUs, upto).filter((p) => KEPT_STOPS.has(str(p.ev.payload['reason']))),
    );
    w.claim(
      d,
      w.near('libvirt/started', fromUs, upto).filter((p) => KEPT_STARTS.has(str(p.ev.payload['reason']))),
    );
    w.claim(d, w.near('libvirt/other', fromUs, upto));
    // The silence it caused: up to the first beat after the resume, and at most to the grace
    // that beat was given. An alarm after the agent beat again is not the pause's (the agent
    // may well hang a few seconds after a resume: that is its own story).
    const graceEnd = endUs + graceUs + 5 * S;
    const beats = [...w.near('heartbeat/beat', endUs, graceEnd, true), ...w.near('channel/heartbeat-back', endUs, graceEnd, true)];
    const silenceTo = beats.length ? Math.min(...beats.map((p) => p.timeUs)) : graceEnd;
    // A heartbeat-lost says how long the agent had been silent: a silence that began after the
    // resume (the agent beat meanwhile, even when no beat is stored) is not the pause's.
    const silentSince = (p: Placed): number => p.timeUs - (num(p.ev.payload['silentMs']) ?? Infinity) * 1000;
    const alarms = [
      ...w.near('channel/heartbeat-lost', fromUs, silenceTo).filter((p) => silentSince(p) <= endUs + S),
      ...w.near('channel/agent-lost', fromUs, silenceTo),
    ];
    w.claim(d, alarms);
    w.claim(d, w.near('channel/heartbeat-back', fromUs, silenceTo));
    // The same agent linking again after a restore: the link was made anew, the agent lived.
    const boots = new Set(w.all.filter((p) => p.timeUs < fromUs && p.ev.source).map((p) => p.ev.source!.agentRun.split('/')[0]));
    w.claim(
      d,
      w.near('channel/agent-connected', fromUs, graceEnd).filter((p) => boots.size === 0 || boots.has(str(p.ev.payload['bootId']))),
    );
    const stopped = w.near('libvirt/stopped', fromUs, upto, true).find((p) => KEPT_STOPS.has(str(p.ev.payload['reason'])));
    const words = [
      ...suspended.map((p) => `${str(p.ev.payload['event'])} ${str(p.ev.payload['reason'])}`.trim()),
      ...(stopped ? [`Stopped ${str(stopped.ev.payload['reason'])}`] : []),
      ...(end ? [str(end.ev.payload['libvirt']) || `${str(end.ev.payload['event'])} ${str(end.ev.payload['reason'])}`.trim()] : []),
    ];
    const ended = end?.ev.payload['ended'] === true;
    d.summary =
      `The host stopped the guest at ${clock(fromUs)} (${HELD_WHY[why] ?? why}${words.length ? `; libvirt: ${words.join(', ')}` : ''})` +
      (end
        ? ended
          ? ` and the domain then stopped for good ${secs(endUs - fromUs)} later.`
          : ` for ${secs(endUs - fromUs)}; it ran again at ${clock(endUs)}.`
        : ' and it had not run again by the end of the window.') +
      ' Its clock stood still meanwhile: the silence of its heartbeats and link is the pause’s, not a hang or an agent fault' +
      (alarms.length ? ` (${alarms.length} liveness alarm${alarms.length === 1 ? '' : 's'} in that time belong to it)` : '') +
      '.';
    out.push(d);
  }
}
