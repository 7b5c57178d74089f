// Pacemaker's word on the VM's resource, its node or fencing: evidence for a verdict vesper
// drew near it, or a verdict of its own (unknown, uncertain) when vesper saw nothing.
import { num, str } from '../payload.js';
import { S, type Window, clock, draft, type Draft } from './window.js';

/** Pacemaker's word: evidence for a verdict near it, or a verdict of its own when vesper saw nothing. */
export function pacemaker(w: Window, out: Draft[]): void {
  for (const p of [...w.of('pacemaker/resource-failed'), ...w.of('pacemaker/node-lost'), ...w.of('pacemaker/fencing')]) {
    if (w.claimed.has(p.id)) continue;
    const near = out
      .filter((d) => Math.abs(d.atUs - p.timeUs) <= 60 * S)
      .sort((a, b) => Math.abs(a.atUs - p.timeUs) - Math.abs(b.atUs - p.timeUs))[0];
    if (near) {
      w.claim(near, [p]);
      continue;
    }
    const host = p.ev.event !== 'resource-failed';
    const d = draft(
      'unknown',
      host ? 'host' : 'service',
      'uncertain',
      p.timeUs,
      `Pacemaker reported ${p.ev.event}${str(p.ev.payload['rsc']) ? ` for ${str(p.ev.payload['rsc'])}` : ''}${str(p.ev.payload['task']) ? ` (${str(p.ev.payload['task'])}` + (num(p.ev.payload['rc']) !== undefined ? ` rc ${num(p.ev.payload['rc'])})` : ')') : ''} at ${clock(p.timeUs)}; ` +
        "vesper's own events in the window do not say what happened.",
    );
    w.claim(d, [p]);
    out.push(d);
  }
}
