// A ProbeContext for driving a shipped probe's setup and handlers in a unit test: every kernel
// facility present and inert; a test overrides what it watches (trace, emit, lacks...).
import type { ProbeContext } from '../../contract/probe-api.js';

export function fakeProbeContext(o: Pick<ProbeContext, 'name' | 'params'> & Partial<ProbeContext>): ProbeContext {
  return {
    instance: 0,
    handle: 1,
    capabilities: { tracefs: true, kprobeEvents: true, psi: true, cgroupV2: true, kmsg: true },
    log: () => undefined,
    trace: () => undefined,
    hasTraceEvent: () => true,
    kprobe: () => 'k',
    kmsg: () => undefined,
    pressure: () => undefined,
    memoryEvents: () => undefined,
    every: () => undefined,
    after: () => undefined,
    emit: () => true,
    lost: () => undefined,
    lacks: () => undefined,
    comm: () => '',
    procStatus: () => undefined,
    now: () => 0,
    ...o,
  };
}
