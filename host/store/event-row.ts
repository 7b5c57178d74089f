// How a VesperEvent is laid out in the events table, both ways.

import type { Disposition, VesperEvent } from '../notify/event.js';

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
  payload: string;
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

export function eventFromRow(row: EventRow): VesperEvent {
  const ev: VesperEvent = {
    id: row.id,
    vm: row.vm,
    plugin: row.plugin,
    instance: row.instance,
    event: row.event,
    guestTimeUs: row.guest_time_us,
    hostTimeUs: row.host_time_us,
    source: row.agent_run === null || row.seq === null ? null : { agentRun: row.agent_run, seq: row.seq },
    payload: JSON.parse(row.payload) as Record<string, unknown>,
  };
  if (row.disposition !== null) ev.disposition = row.disposition;
  return ev;
}
