// A guest record as the manager's event: which VM, which plugin (the probe), which instance
// and event, the guest's and the host's times, the record's identity for de-duplication, and
// the record itself, exactly as the agent sent it. The payload (plain data) is made from the
// record only when something reads it: the ingest path stores the record's bytes, so a storm
// nobody is watching costs no conversion at all.
import type { AgentRecord } from '../../proto/record.js';
import { decodeRecord, isUndecodable, type pb } from '../../proto/codec.js';
import type { Disposition, VesperEvent } from './event.js';
import { capOf, capUtf8 } from './guest-strings.js';

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
    // a guest's string, at most what its kernel meaning allows (guest-strings.ts)
    out[k] = typeof v === 'string' ? capUtf8(v, capOf(k)) : plainOf(v);
  }
  return out;
}

/**
 * A record's payload: keyed by its kind ({ signal: {...} }, { exit: {...} }), as on the wire,
 * so that a payload says what it is without its plugin's manifest; with the guest's
 * monotonic time of the kernel event.
 */
export function payloadOfRecord(raw: pb.Record): Record<string, unknown> {
  // A body that did not decode is told as such, with what the header said.
  if (isUndecodable(raw)) return { undecodable: true, monoNs: raw.monoNs };
  const kind = raw.payload ?? 'generic';
  const body = (raw as unknown as Record<string, unknown>)[kind];
  return { [kind]: plainOf(body) ?? {}, monoNs: raw.monoNs };
}

type Source = { agentRun: string; seq: number };

/** A VesperEvent that carries its guest record; `payload` is decoded from it on first read. */
export class RecordEvent implements VesperEvent {
  id?: number;
  disposition?: Disposition;
  #decoded: pb.Record | null;
  #payload: Record<string, unknown> | null = null;

  constructor(
    public vm: string,
    public plugin: string,
    public instance: number,
    public event: string,
    public guestTimeUs: number | null,
    public hostTimeUs: number,
    public source: Source | null,
    /** the encoded vesper.v1.Record */
    public readonly record: Uint8Array,
    decoded: pb.Record | null = null,
  ) {
    this.#decoded = decoded;
  }

  get payload(): Record<string, unknown> {
    if (this.#payload === null) {
      this.#payload = payloadOfRecord(this.#decoded ?? decodeRecord(this.record));
      this.#decoded = null;
    }
    return this.#payload;
  }

  /** What JSON.stringify writes: the event with its payload, without the bytes. */
  toJSON(): VesperEvent {
    const out: VesperEvent = {
      vm: this.vm,
      plugin: this.plugin,
      instance: this.instance,
      event: this.event,
      guestTimeUs: this.guestTimeUs,
      hostTimeUs: this.hostTimeUs,
      source: this.source,
      payload: this.payload,
    };
    if (this.id !== undefined) out.id = this.id;
    if (this.disposition !== undefined) out.disposition = this.disposition;
    return out;
  }
}

/**
 * The agent's own records that are the channel plugin's events, the link's business: its loss
 * report (records-lost) and its word that it is stopping (agent-stopping).
 */
const CHANNEL_EVENTS: Partial<Record<AgentRecord['kind'], string>> = { loss: 'records-lost', agentStopping: 'agent-stopping' };

export function eventOfRecord(vm: string, agentRun: string, r: AgentRecord, hostTimeUs: number): RecordEvent {
  const channel = r.probe === 'agent' ? CHANNEL_EVENTS[r.kind] : undefined;
  return new RecordEvent(
    vm,
    channel ? 'channel' : r.probe,
    r.instance,
    channel ?? r.event,
    Math.round(r.wallNs / 1000),
    hostTimeUs,
    { agentRun, seq: r.seq },
    r.bytes,
    r.rawIfDecoded,
  );
}
