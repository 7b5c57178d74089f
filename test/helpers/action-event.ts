// The event a filter hands to an action in tests: libvirt's crash of a VM (a panicked guest),
// its disposition `action`. Shared by the action runner's unit tests and the lockd failover race.
import type { VesperEvent } from '../../host/notify/event.js';

export function crashedEvent(vm: string, over: Partial<VesperEvent> = {}): VesperEvent {
  return {
    id: 0,
    vm,
    plugin: 'libvirt',
    instance: 0,
    event: 'crashed',
    guestTimeUs: null,
    hostTimeUs: Date.now() * 1000,
    source: null,
    payload: { reason: 'panicked' },
    disposition: 'action',
    ...over,
  };
}
