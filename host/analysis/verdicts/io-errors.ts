// Disk I/O errors the hypervisor reported: the host's storage under the guest failed, not the
// guest; the pause libvirt made for it (error policy "stop") is its consequence.
import { str } from '../payload.js';
import type { Placed } from '../timeline.js';
import { S, type Window, clock, clusters, draft, type Draft } from './window.js';

/** Disk I/O errors libvirt reported, with the pause they caused. */
export function ioErrors(w: Window, out: Draft[]): void {
  for (const group of clusters(w.of('libvirt/io-error'), 60 * S)) {
    const first = group[0] as Placed;
    const devices = [...new Set(group.map((p) => str(p.ev.payload['device']) || '?'))];
    const reasons = [...new Set(group.map((p) => str(p.ev.payload['reason'])).filter(Boolean))];
    const actions = [...new Set(group.map((p) => str(p.ev.payload['action'])).filter(Boolean))];
    const d = draft(
      'io-error',
      'host',
      'confident',
      first.timeUs,
      `The hypervisor hit I/O errors on ${devices.join(', ')}${reasons.length ? ` (${reasons.join(', ')})` : ''} from ${clock(first.timeUs)}, ` +
        `${group.length} time${group.length === 1 ? '' : 's'}, action ${actions.join('/') || '?'}: the host's storage under the guest failed, not the guest.`,
      { devices, reasons, actions, count: group.length },
    );
    w.claim(d, group);
    const end = (group.at(-1) as Placed).timeUs;
    w.claim(
      d,
      w.near('libvirt/suspended', first.timeUs - S, end + 5 * S).filter((p) => /i\/?o/i.test(str(p.ev.payload['reason']))),
    );
    out.push(d);
  }
}
