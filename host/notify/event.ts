// The one event shape of the manager: what every plugin (a guest probe attached to a VM, or a
// host-side plugin such as libvirt or channel liveness) hands to the notification framework,
// what the store keeps, what subscribers and actions receive.

/** What the filter decided for an event. */
export type Disposition = 'notify' | 'discard' | 'action';

export interface VesperEvent {
  /** Store row id, set once stored; subscribers see it as a stable cursor. */
  id?: number;
  /** libvirt domain name ('' for events of the host itself) */
  vm: string;
  /** plugin name: a probe ('signal', 'oom', ...) or a host plugin ('libvirt', 'channel') */
  plugin: string;
  /** plugin instance (a probe's instance number; 0 for host plugins) */
  instance: number;
  /** event name from the plugin's event list */
  event: string;
  /** guest wall clock in microseconds when the guest saw it; null for host events */
  guestTimeUs: number | null;
  /** host wall clock in microseconds when the manager received it */
  hostTimeUs: number;
  /**
   * For guest records: the agent run (boot id + agent start, from its hello) and the agent's
   * sequence number. Together they identify a record, so a resent record is stored once.
   */
  source: { agentRun: string; seq: number } | null;
  /** The event's fields, JSON-serialisable. */
  payload: Record<string, unknown>;
  /**
   * For guest records: the record as the agent sent it (an encoded vesper.v1.Record), from
   * which payload is decoded. The store keeps these bytes rather than the payload's JSON.
   */
  record?: Uint8Array;
  /** Set by the framework's filter. */
  disposition?: Disposition;
}
