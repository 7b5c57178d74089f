// A guest record as the manager's event: which VM, which plugin (the probe), which instance
// and event, the guest's and the host's times, the record's identity for de-duplication, and
// its payload as plain data.
import type { AgentRecord } from '../channel/agent-client.js';
import type { VesperEvent } from '../notify/event.js';

/**
 * Plain data from a decoded protobuf message. Static protobufjs classes keep field defaults
 * on the prototype (so JSON.stringify would drop a zero exit code or signal 0); for-in walks
 * them too.
 */
export function plainOf(msg: unknown): unknown {
  if (msg === null || typeof msg !== 'object') return msg;
  if (Array.isArray(msg)) return msg.map(plainOf);
  if (msg instanceof Uint8Array) return Buffer.from(msg).toString('base64');
  const out: Record<string, unknown> = {};
  for (const k in msg) {
    const v = (msg as Record<string, unknown>)[k];
    if (typeof v === 'function') continue;
    out[k] = plainOf(v);
  }
  return out;
}

export function eventOfRecord(vm: string, agentRun: string, r: AgentRecord, hostTimeUs: number): VesperEvent {
  // Keyed by the record's kind ({ signal: {...} }, { exit: {...} }), as on the wire, so that a
  // payload says what it is without its plugin's manifest.
  const body = (r.raw as unknown as Record<string, unknown>)[r.kind];
  const payload: Record<string, unknown> = { [r.kind]: plainOf(body) ?? {}, monoNs: r.monoNs };
  // The agent's own loss report is the channel plugin's records-lost: the link's business.
  const lossReport = r.probe === 'agent' && r.kind === 'loss';
  return {
    vm,
    plugin: lossReport ? 'channel' : r.probe,
    instance: r.instance,
    event: lossReport ? 'records-lost' : r.event,
    guestTimeUs: Math.round(r.wallNs / 1000),
    hostTimeUs,
    source: { agentRun, seq: r.seq },
    payload,
  };
}
