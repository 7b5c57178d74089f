// Events for the event store's tests and for the crash child they spawn.

import type { VesperEvent } from '../../host/notify/event.js';

/** The agent run the crash child writes. */
export const CRASH_VM = 'vm-crash';
export const CRASH_RUN = 'boot-crash-run';

/** A base host time well in the past, so that tests choose "now" explicitly. */
export const T0_US = 1_750_000_000_000_000;

export function guestEvent(vm: string, agentRun: string, seq: number, over: Partial<VesperEvent> = {}): VesperEvent {
  return {
    vm,
    plugin: 'signal',
    instance: 0,
    event: 'signal_generate',
    guestTimeUs: T0_US + seq * 1000 - 7,
    hostTimeUs: T0_US + seq * 1000,
    source: { agentRun, seq },
    payload: { sig: 11, code: 1, target: { pid: 4000 + seq, comm: 'crasher' }, senderIsKernel: true },
    disposition: 'notify',
    ...over,
  };
}

export function hostEvent(over: Partial<VesperEvent> = {}): VesperEvent {
  return {
    vm: 'vm-a',
    plugin: 'libvirt',
    instance: 0,
    event: 'lifecycle',
    guestTimeUs: null,
    hostTimeUs: T0_US,
    source: null,
    payload: { state: 'crashed', reason: 'panicked' },
    disposition: 'notify',
    ...over,
  };
}

/** `count` guest records of one agent run with seqs from..from+count-1, as one agent batch. */
export function guestBatch(vm: string, agentRun: string, from: number, count: number, payloadBytes = 0): VesperEvent[] {
  const filler = 'x'.repeat(payloadBytes);
  const out: VesperEvent[] = [];
  for (let seq = from; seq < from + count; seq++) {
    out.push(guestEvent(vm, agentRun, seq, payloadBytes > 0 ? { payload: { seq, filler } } : {}));
  }
  return out;
}
