// The record stream of one link: each record of a batch decoded from its own bytes, dropped when
// already held (de-duplicated by sequence number), a gap said, and the rest typed as AgentRecords
// with the probe and event names the agent gave. This is the hot path: nothing here allocates
// per record beyond the record itself.
import { readRecordHeader, splitBatchFrame, type RecordHeader } from '../../proto/batch.js';
import { v1, type pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { AgentRecord, type RecordKind } from '../../proto/record.js';
import type { ProbeInfo } from './agent-probes.js';

/** The event names of the agent's own records (handle 0), by payload kind. */
const AGENT_EVENTS: Partial<Record<RecordKind, string>> = { loss: 'loss', probeFault: 'probe_fault', agentStopping: 'stopping' };

export class RecordIntake {
  /** Highest sequence number received in order; everything up to it is held. */
  lastSeq: number;
  duplicates = 0;
  gaps = 0;
  recordsReceived = 0;
  /** records seen in batches, duplicates and refused ones included: what the budget counts */
  recordsSeen = 0;

  constructor(
    resumeAfterSeq: number,
    /** the probes the agent runs, by handle (the client's) */
    private readonly probes: Map<number, ProbeInfo>,
    private readonly problem: (e: VesperError) => void,
  ) {
    this.lastSeq = resumeAfterSeq;
  }

  /**
   * A batch frame's records not yet held (copied once, out of the read buffer, for the store),
   * or null when the frame does not split into records (then it is decoded as a message).
   */
  fromBatchFrame(payload: Buffer): AgentRecord[] | null {
    const own = Buffer.from(payload);
    const parts = splitBatchFrame(own);
    if (parts === null) return null;
    this.recordsSeen += parts.length;
    const out: AgentRecord[] = [];
    for (const bytes of parts) {
      const h = readRecordHeader(bytes);
      if (h !== null) {
        this.received(out, h, null, bytes);
        continue;
      }
      try {
        const raw = v1.Record.decode(bytes);
        this.received(out, headerOf(raw), raw, bytes);
      } catch (err) {
        this.problem(new VesperError(ErrorCode.MESSAGE_DECODE, `undecodable record: ${(err as Error).message}`, '', { cause: err }));
      }
    }
    return out;
  }

  /** A batch that came as a decoded message: its records not yet held. */
  fromBatchMessage(batch: NonNullable<pb.IFrame['batch']>): AgentRecord[] {
    const out: AgentRecord[] = [];
    this.recordsSeen += batch.records?.length ?? 0;
    for (const raw of (batch.records ?? []) as pb.Record[]) this.received(out, headerOf(raw), raw, v1.Record.encode(raw).finish());
    return out;
  }

  /** One received record: dropped if already held, else typed and added to `out`. */
  private received(out: AgentRecord[], h: RecordHeader, raw: pb.Record | null, bytes: Uint8Array): void {
    const seq = h.seq;
    if (seq <= this.lastSeq) {
      this.duplicates++;
      return;
    }
    if (seq !== this.lastSeq + 1) {
      this.gaps++;
      this.problem(new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `sequence gap: expected ${this.lastSeq + 1}, got ${seq}`));
    }
    this.lastSeq = seq;
    this.recordsReceived++;
    out.push(this.typed(h, raw, bytes));
  }

  private typed(h: RecordHeader, raw: pb.Record | null, bytes: Uint8Array): AgentRecord {
    const kind = (h.kind ?? 'generic') as RecordKind;
    if (h.handle === 0)
      return new AgentRecord(h.seq, h.monoNs, h.wallNs, 0, 'agent', 0, AGENT_EVENTS[kind] ?? 'probe_fault', kind, bytes, raw);
    const p = this.probes.get(h.handle);
    return new AgentRecord(
      h.seq,
      h.monoNs,
      h.wallNs,
      h.handle,
      p?.name ?? `handle-${h.handle}`,
      p?.instance ?? 0,
      p?.events.get(h.eventId) ?? `event-${h.eventId}`,
      kind,
      bytes,
      raw,
    );
  }
}

/** A decoded record's header (field by field: protobufjs keeps defaults on the prototype). */
function headerOf(raw: pb.Record): RecordHeader {
  return { seq: raw.seq, monoNs: raw.monoNs, wallNs: raw.wallNs, handle: raw.handle, eventId: raw.eventId, kind: raw.payload ?? null };
}
