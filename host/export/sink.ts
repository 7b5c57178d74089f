// What an export sink is given and must do. The store is the outbox: the framework reads events after
// a sink's persisted cursor and hands them over in order; a sink resolves deliver() only once the
// receiver has them durably (or has acknowledged them), and throws to have the same batch retried.

/** One stored event as sinks receive it: the store row, payload decoded to JSON. */
export interface ExportEvent {
  /** this host's store row id: increasing, the sink cursor */
  id: number;
  /** stable across resends: `${host}/${id}` — receivers de-duplicate on it */
  eventId: string;
  host: string;
  vm: string;
  plugin: string;
  instance: number;
  event: string;
  guestTimeUs: number | null;
  hostTimeUs: number;
  agentRun: string | null;
  seq: number | null;
  disposition: string | null;
  payload: Record<string, unknown>;
}

export interface ExportSink {
  /** the sink's name in vesper.yaml (unique) */
  readonly name: string;
  /** 'webhook' | 'file' | 'syslog' | 'nats' */
  readonly kind: string;
  /** Delivers one batch, in id order. Resolve = delivered; throw = retry the same batch later. */
  deliver(batch: readonly ExportEvent[], signal: AbortSignal): Promise<void>;
  close(): Promise<void>;
  /**
   * For a receiver that never acknowledges (syslog over a stream): how long after deliver()
   * resolved a batch may still be lost with the connection. The persisted cursor stays that far
   * behind, so a vesperd restarted meanwhile sends those batches again (at least once).
   */
  readonly unconfirmedMs?: number;
}
