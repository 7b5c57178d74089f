// How a VesperEvent is laid out in the events table, both ways.

import type { Disposition, VesperEvent } from '../notify/event.js';
import { payloadOfRecord, RecordEvent } from '../notify/record-event.js';
import { decodeRecord } from '../../proto/codec.js';

/** The events table's columns in the order of EVENT_COLUMNS. */
export interface EventRow {
  id: number;
  vm: string;
  plugin: string;
  instance: number;
  event: string;
  guest_time_us: number | null;
  host_time_us: number;
  agent_run: string | null;
  seq: number | null;
  disposition: Disposition | null;
  /** JSON text; for a guest record, the record's protobuf bytes (a BLOB) */
  payload: string | Buffer;
}

export const EVENT_COLUMNS = 'id, vm, plugin, instance, event, guest_time_us, host_time_us, agent_run, seq, disposition, payload';

function bigintAsString(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

/**
 * Payload as JSON text. Payloads almost never hold a bigint, and a replacer slows every call,
 * so the replacer is only used when the plain call has refused one.
 */
export function payloadJson(payload: Record<string, unknown>): string {
  try {
    return JSON.stringify(payload);
  } catch (err) {
    if (err instanceof TypeError && /BigInt/i.test(err.message)) return JSON.stringify(payload, bigintAsString);
    throw err;
  }
}

/** What the payload column holds for an event: its record's bytes, or its payload as JSON. */
export function payloadColumn(e: VesperEvent): string | Uint8Array {
  return e.record ?? payloadJson(e.payload);
}

/** The payload of a stored event from its payload column (JSON text or record bytes). */
export function payloadFromColumn(col: string | Uint8Array): Record<string, unknown> {
  return typeof col === 'string' ? (JSON.parse(col) as Record<string, unknown>) : payloadOfRecord(decodeRecord(col));
}

export function eventFromRow(row: EventRow): VesperEvent {
  const source = row.agent_run === null || row.seq === null ? null : { agentRun: row.agent_run, seq: row.seq };
  if (typeof row.payload !== 'string') {
    const ev = new RecordEvent(row.vm, row.plugin, row.instance, row.event, row.guest_time_us, row.host_time_us, source, row.payload);
    ev.id = row.id;
    if (row.disposition !== null) ev.disposition = row.disposition;
    return ev;
  }
  const ev: VesperEvent = {
    id: row.id,
    vm: row.vm,
    plugin: row.plugin,
    instance: row.instance,
    event: row.event,
    guestTimeUs: row.guest_time_us,
    hostTimeUs: row.host_time_us,
    source,
    payload: JSON.parse(row.payload) as Record<string, unknown>,
  };
  if (row.disposition !== null) ev.disposition = row.disposition;
  return ev;
}
