// libvirt's own domain events as events of the host plugin `libvirt`: the hypervisor's view of
// a guest (started, crashed through pvpanic, watchdog fired, I/O error...), next to what the
// guest's probes said.
import type { LibvirtEvent } from '../libvirt/events.js';
import type { VesperEvent } from '../notify/event.js';

/** The libvirt plugin's event name for one libvirt event; null for events we do not report. */
export function libvirtEventName(e: LibvirtEvent): string | null {
  switch (e.kind) {
    case 'panic':
      return 'panicked';
    case 'reboot':
      return 'rebooted';
    case 'watchdog':
      return 'watchdog';
    case 'io-error':
      return 'io-error';
    case 'lifecycle':
      switch (e.event) {
        case 'Started':
          return 'started';
        case 'Stopped':
          // "Stopped Crashed" follows a panic: the domain is gone because the guest crashed.
          return e.reason === 'Crashed' || e.reason === 'Failed' ? 'crashed' : 'stopped';
        case 'Shutdown':
          return 'shutdown';
        case 'Suspended':
          return 'suspended';
        case 'Resumed':
          return 'resumed';
        default:
          return 'other';
      }
    case 'other':
      return null; // virsh lines that are not domain events
    default:
      return 'other';
  }
}

export function eventOfLibvirt(e: LibvirtEvent, hostTimeUs = Date.now() * 1000): VesperEvent | null {
  const name = libvirtEventName(e);
  if (!name || !e.domain) return null;
  const payload: Record<string, unknown> = { libvirtEvent: e.name };
  if (e.event !== undefined) payload['event'] = e.event;
  if (e.reason !== undefined) payload['reason'] = e.reason;
  if (e.action !== undefined) payload['action'] = e.action;
  if (e.device !== undefined) payload['device'] = e.device;
  payload['libvirtTimeUs'] = e.at.getTime() * 1000;
  return { vm: e.domain, plugin: 'libvirt', instance: 0, event: name, guestTimeUs: null, hostTimeUs, source: null, payload };
}
