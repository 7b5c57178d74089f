// A record as the host holds it once the channel has read it off the wire: the header fields
// typed with its probe's names, and the encoded record kept as it came. The channel makes them,
// the notification framework turns them into events; neither owns the type.
import { decodeRecord, type pb } from './codec.js';

export type RecordKind =
  'signal' | 'oom' | 'exec' | 'exit' | 'fork' | 'psi' | 'kprobe' | 'heartbeat' | 'loss' | 'probeFault' | 'generic' | 'agentStopping';

/**
 * One record from the agent, typed with its probe's names. Its full decode (`raw`, the payload's
 * objects and strings) is made only when read: the manager's ingest path needs the header and
 * the bytes, not the payload.
 */
export class AgentRecord {
  #raw: pb.Record | null;

  constructor(
    readonly seq: number,
    readonly monoNs: number,
    readonly wallNs: number,
    readonly handle: number,
    /** probe name, or "agent" for the agent's own records (loss, probe faults, its stop) */
    readonly probe: string,
    readonly instance: number,
    /** event name from the probe's manifest ("loss" / "probe_fault" / "stopping" for the agent's own) */
    readonly event: string,
    readonly kind: RecordKind,
    /** the record exactly as the agent sent it (an encoded vesper.v1.Record) */
    readonly bytes: Uint8Array,
    raw: pb.Record | null,
  ) {
    this.#raw = raw;
  }

  get raw(): pb.Record {
    return (this.#raw ??= decodeRecord(this.bytes));
  }

  /** the decoded record if something decoded it already, else null */
  get rawIfDecoded(): pb.Record | null {
    return this.#raw;
  }
}
