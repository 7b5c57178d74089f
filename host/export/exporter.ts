// The export framework: the store is the outbox. Each sink has a runner that reads the events
// after the sink's cursor (persisted in the store, sink_cursors), hands them to the sink in id
// order, one batch at a time, and moves the cursor only once deliver() resolved: at least once,
// never reordered (one batch in flight per sink, ids in commit order, so one VM's events keep
// their order too). A failed batch is retried, the same batch, with exponential backoff. Export
// is not an action: no rate limit applies. Runners are woken when the daemon commits events.
//
// Retention (EventStore.prune): age retention is held behind the slowest sink, so an
// undelivered event is never deleted for its age. Size retention is the store's hard limit and
// may delete undelivered events; the exporter counts them per sink as lost (persisted, logged
// at error level, in `vesper status`).
import type { Logger } from 'pino';
import type { RunnerOptions } from '../config/sinks.js';

export type { RunnerOptions } from '../config/sinks.js';
import { payloadFromColumn, type EventRow } from '../store/event-row.js';
import type { EventStore } from '../store/event-store.js';
import type { ExportEvent, ExportSink } from './sink.js';

export const DEFAULT_RUNNER_OPTIONS: RunnerOptions = {
  batchMax: 1000,
  linger: 20,
  timeout: 10_000,
  retryMin: 200,
  retryMax: 30_000,
  start: 'now',
};

/** What `vesper status` and the metrics show of one sink. */
export interface SinkState {
  name: string;
  kind: string;
  /** id of the last event delivered */
  cursor: number;
  /** events stored after the cursor, not delivered yet */
  backlog: number;
  /** events delivered by this process */
  delivered: number;
  /** deliver() calls that failed (and were retried) */
  failures: number;
  /** events deleted by the store's size limit before this sink delivered them (all time) */
  lost: number;
  lastError: string | null;
  lastErrorAtMs: number | null;
  lastDeliveredAtMs: number | null;
  /** 'idle' | 'delivering' | 'retrying' | 'stopped' */
  status: string;
}

/** One configured sink: its sink object and how it is run. */
export interface SinkSpec {
  sink: ExportSink;
  options: RunnerOptions;
}

export function exportEventOf(row: EventRow, host: string): ExportEvent {
  return {
    id: row.id,
    eventId: `${host}/${row.id}`,
    host,
    vm: row.vm,
    plugin: row.plugin,
    instance: row.instance,
    event: row.event,
    guestTimeUs: row.guest_time_us,
    hostTimeUs: row.host_time_us,
    agentRun: row.agent_run,
    seq: row.seq,
    disposition: row.disposition,
    payload: payloadFromColumn(row.payload),
  };
}

class SinkRunner {
  cursor: number;
  /** the highest id read into memory (>= cursor: a batch in flight) */
  readThrough: number;
  lost: number;
  delivered = 0;
  failures = 0;
  lastError: string | null = null;
  lastErrorAtMs: number | null = null;
  lastDeliveredAtMs: number | null = null;
  /** the cursor as persisted: behind `cursor` by the sink's unconfirmedMs (ExportSink) */
  savedCursor: number;
  /** delivered batches not yet persisted, for a sink with unconfirmedMs: their last id and when */
  private unconfirmed: { id: number; atMs: number }[] = [];
  status = 'idle';
  private readonly abort = new AbortController();
  private wakeUp: (() => void) | null = null;
  private woken = false;
  private loop: Promise<void> | null = null;

  constructor(
    readonly sink: ExportSink,
    readonly options: RunnerOptions,
    private readonly store: EventStore,
    private readonly host: string,
    private readonly log: Logger,
  ) {
    const saved = store.sinkOp('reading a sink cursor', (t) => t.get(sink.name));
    if (saved) {
      this.cursor = saved.cursor;
      this.lost = saved.lost;
    } else {
      this.cursor = options.start === 'oldest' ? 0 : store.lastId();
      this.lost = 0;
      store.sinkOp('saving a sink cursor', (t) => t.set(sink.name, this.cursor));
    }
    this.readThrough = this.cursor;
    this.savedCursor = this.cursor;
  }

  /**
   * What may be persisted once a batch ending at `last` is delivered: `last` itself, or for a
   * sink whose receiver never acknowledges, the last batch delivered unconfirmedMs ago (null:
   * nothing new). An idle sink keeps its last window unconfirmed: a restart then sends it again,
   * which costs duplicates only.
   */
  private confirmedThrough(last: number): number | null {
    const ms = this.sink.unconfirmedMs ?? 0;
    if (ms <= 0) return last;
    const now = Date.now();
    this.unconfirmed.push({ id: last, atMs: now });
    let save: number | null = null;
    while (this.unconfirmed.length && this.unconfirmed[0]!.atMs <= now - ms) save = this.unconfirmed.shift()!.id;
    return save;
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => {
      this.status = 'stopped';
      this.log.error({ sink: this.sink.name, err: (err as Error).message }, 'export sink stopped');
    });
  }

  wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private sleep(ms: number, wakeable: boolean): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.abort.signal.removeEventListener('abort', done);
        if (wakeable) this.wakeUp = null;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.abort.signal.addEventListener('abort', done);
      if (wakeable) this.wakeUp = done;
    });
  }

  private async run(): Promise<void> {
    const o = this.options;
    let retryMs = o.retryMin;
    let batch: ExportEvent[] = [];
    while (!this.abort.signal.aborted) {
      if (batch.length === 0) {
        this.woken = false;
        const rows = this.store.sinkOp('reading events to export', (t) => t.after(this.cursor, o.batchMax));
        if (rows.length === 0) {
          this.status = 'idle';
          // Woken by a commit; the timeout only guards against a missed wake.
          if (!this.woken) await this.sleep(1000, true);
          if (o.linger > 0 && !this.abort.signal.aborted) await this.sleep(o.linger, false);
          continue;
        }
        batch = rows.map((r) => exportEventOf(r, this.host));
        this.readThrough = batch[batch.length - 1]!.id;
      }
      this.status = 'delivering';
      const signal = AbortSignal.any([this.abort.signal, AbortSignal.timeout(o.timeout)]);
      try {
        await this.sink.deliver(batch, signal);
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.failures++;
        this.lastError =
          signal.aborted && !(err instanceof Error && err.message)
            ? `timed out after ${o.timeout} ms`
            : String((err as Error).message ?? err);
        this.lastErrorAtMs = Date.now();
        this.status = 'retrying';
        if (this.failures === 1 || retryMs >= o.retryMax || this.failures % 10 === 0)
          this.log.warn(
            { sink: this.sink.name, err: this.lastError, retryMs, failures: this.failures },
            'export sink: delivery failed, retrying',
          );
        await this.sleep(retryMs * (0.75 + Math.random() * 0.5), false);
        retryMs = Math.min(o.retryMax, retryMs * 2);
        continue;
      }
      retryMs = o.retryMin;
      const last = batch[batch.length - 1]!.id;
      this.delivered += batch.length;
      this.lastDeliveredAtMs = Date.now();
      batch = [];
      this.cursor = last;
      const save = this.confirmedThrough(last);
      if (save === null) continue;
      try {
        this.store.sinkOp('saving a sink cursor', (t) => t.set(this.sink.name, save));
        this.savedCursor = save;
      } catch (err) {
        // kept in memory; a restart before the next save sends this batch again (at least once)
        this.log.warn({ sink: this.sink.name, err: (err as Error).message }, 'export sink: cursor not saved');
      }
    }
    this.status = 'stopped';
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.wake();
    await this.loop;
    this.status = 'stopped';
    await this.sink
      .close()
      .catch((err: unknown) => this.log.warn({ sink: this.sink.name, err: (err as Error).message }, 'export sink: close failed'));
  }
}

export class Exporter {
  private runners = new Map<string, SinkRunner>();

  constructor(
    private readonly store: EventStore,
    private readonly log: Logger,
    /** this host's name in every event id */
    readonly host: string,
  ) {}

  /**
   * Runs these sinks from now on: a sink of the same name and kind keeps its runner when its
   * options are unchanged (the new sink object is closed); others are stopped, new ones started
   * from their saved cursor. For the daemon's start and a configuration reload.
   */
  async setSinks(specs: readonly SinkSpec[]): Promise<void> {
    const next = new Map<string, SinkRunner>();
    const stopping: Promise<void>[] = [];
    for (const s of specs) {
      const old = this.runners.get(s.sink.name);
      if (
        old &&
        old.sink.kind === s.sink.kind &&
        JSON.stringify(old.options) === JSON.stringify(s.options) &&
        sameConfig(old.sink, s.sink)
      ) {
        next.set(s.sink.name, old);
        stopping.push(s.sink.close());
        continue;
      }
      if (old) await old.stop();
      const r = new SinkRunner(s.sink, s.options, this.store, this.host, this.log);
      next.set(s.sink.name, r);
    }
    for (const [name, r] of this.runners) if (!next.has(name)) stopping.push(r.stop());
    this.runners = next;
    await Promise.allSettled(stopping);
    for (const r of next.values()) r.start();
  }

  /** Events were committed: runners waiting for some read them. */
  wake(): void {
    for (const r of this.runners.values()) r.wake();
  }

  states(): SinkState[] {
    return [...this.runners.values()].map((r) => ({
      name: r.sink.name,
      kind: r.sink.kind,
      cursor: r.cursor,
      backlog: this.store.sinkOp('counting a sink backlog', (t) => t.countAfter(r.cursor)),
      delivered: r.delivered,
      failures: r.failures,
      lost: r.lost,
      lastError: r.lastError,
      lastErrorAtMs: r.lastErrorAtMs,
      lastDeliveredAtMs: r.lastDeliveredAtMs,
      status: r.status,
    }));
  }

  /** The oldest event some sink still has to deliver (age retention keeps it and all after). */
  holdFrom(): number | undefined {
    let min: number | undefined;
    for (const r of this.runners.values()) if (min === undefined || r.savedCursor + 1 < min) min = r.savedCursor + 1;
    return min;
  }

  /** Retention, held behind the sinks; events it deleted before a sink read them are counted lost. */
  prune(nowUs?: number): { deleted: number; complete: boolean } {
    const runners = [...this.runners.values()];
    const before = runners.map((r) => this.store.sinkOp('counting a sink backlog', (t) => t.countAfter(r.readThrough)));
    const result = this.store.prune(nowUs, this.holdFrom());
    if (result.deleted > 0) {
      runners.forEach((r, i) => {
        const lost = before[i]! - this.store.sinkOp('counting a sink backlog', (t) => t.countAfter(r.readThrough));
        if (lost <= 0) return;
        r.lost += lost;
        this.store.sinkOp('counting lost events', (t) => t.addLost(r.sink.name, lost));
        this.log.error(
          { sink: r.sink.name, lost, cursor: r.cursor },
          'export sink: the store reached its size limit and deleted events this sink had not delivered (lost)',
        );
      });
    }
    return result;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.runners.values()].map((r) => r.stop()));
    this.runners.clear();
  }
}

/** Sinks that say what they were built from (`config`) are kept only when it is the same. */
function sameConfig(a: ExportSink, b: ExportSink): boolean {
  const ca = (a as { config?: unknown }).config;
  const cb = (b as { config?: unknown }).config;
  return JSON.stringify(ca) === JSON.stringify(cb);
}
