// The `nats` sink: every stored event published to a JetStream stream once committed, on the
// subject `<prefix>.<host>.<vm>.<plugin>.<event>` (nats-subject.ts) with `Nats-Msg-Id` = the
// event's eventId, so JetStream stores a resend once (within the stream's duplicate window).
//
// A batch is published pipelined, one publish per event, and deliver() resolves only when the
// stream has acknowledged every one of them; any failure throws and the framework resends the
// whole batch (what was stored is dropped as a duplicate by the stream).
//
// Order: a connection is never reconnected under a batch. nats.js would keep publishes that
// were still in its buffer when the server went away and send them after reconnecting, while
// earlier ones lost in the dead socket are only resent with the retried batch: later events
// would be stored before earlier ones. So the connection is made with reconnect off; when it
// drops, everything in flight fails, the batch is retried from its first event on a fresh
// connection, and per VM the stream keeps the store's order.
import os from 'node:os';
import type { NatsConnection } from '@nats-io/nats-core';
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { parseDuration } from '../config/units.js';
import { connectAuth, serverList, type NatsParams } from './nats-config.js';
import { eventSubject } from './nats-subject.js';
import type { ExportEvent, ExportSink } from './sink.js';

/** Counters for status and metrics. */
export interface NatsSinkStats {
  published: number;
  /** acks that said "duplicate": a resend the stream had already */
  duplicates: number;
  connects: number;
}

export class NatsSink implements ExportSink {
  readonly kind = 'nats';
  readonly name: string;
  readonly stats: NatsSinkStats = { published: 0, duplicates: 0, connects: 0 };
  private nc: NatsConnection | null = null;
  private js: JetStreamClient | null = null;
  private connecting: Promise<JetStreamClient> | null = null;
  private readonly ackTimeoutMs: number;
  private readonly encoder = new TextEncoder();

  constructor(
    name: string,
    private readonly cfg: NatsParams,
    /** this host's name (the eventIds' host), for the connection's name */
    private readonly hostName: string = os.hostname(),
  ) {
    this.name = name;
    this.ackTimeoutMs = parseDuration(cfg.ack_timeout);
  }

  async deliver(batch: readonly ExportEvent[], signal: AbortSignal): Promise<void> {
    if (!batch.length) return;
    signal.throwIfAborted();
    const js = await this.client();
    const { headers } = await import('@nats-io/nats-core');
    const stream = this.cfg.stream.name;
    const acks: Promise<PubAck>[] = [];
    for (const e of batch) {
      const h = headers();
      h.set('Nats-Msg-Id', e.eventId);
      const subject = eventSubject(this.cfg.subject_prefix, { host: e.host, vm: e.vm, plugin: e.plugin, event: e.event });
      acks.push(js.publish(subject, this.encoder.encode(JSON.stringify(e)), { msgID: e.eventId, headers: h, timeout: this.ackTimeoutMs }));
    }
    const onAbort = (): void => void this.dropConnection();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const settled = await Promise.allSettled(acks);
      const failed = settled.find((s) => s.status === 'rejected');
      if (failed) {
        // A lost ack may hide a lost publish ahead of stored ones: start over on a new connection.
        await this.dropConnection();
        const why = (failed.reason as Error)?.message ?? String(failed.reason);
        throw new VesperError(ErrorCode.BUS_PUBLISH_FAILED, `nats sink ${this.name}: ${why}`, '', { cause: failed.reason });
      }
      for (const s of settled) {
        const ack = (s as PromiseFulfilledResult<PubAck>).value;
        if (ack.stream !== stream)
          throw new VesperError(ErrorCode.BUS_PUBLISH_FAILED, `nats sink ${this.name}: stored in stream ${ack.stream}, not ${stream}: subjects overlap`);
        if (ack.duplicate) this.stats.duplicates++;
        else this.stats.published++;
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  async close(): Promise<void> {
    const nc = this.nc;
    this.nc = null;
    this.js = null;
    if (nc) await nc.drain().catch(() => nc.close());
  }

  private async dropConnection(): Promise<void> {
    const nc = this.nc;
    this.nc = null;
    this.js = null;
    if (nc) await nc.close().catch(() => undefined);
  }

  private client(): Promise<JetStreamClient> {
    if (this.js && this.nc && !this.nc.isClosed()) return Promise.resolve(this.js);
    this.connecting ??= this.connect().finally(() => (this.connecting = null));
    return this.connecting;
  }

  private async connect(): Promise<JetStreamClient> {
    const { connect } = await import('@nats-io/transport-node');
    const { jetstream } = await import('@nats-io/jetstream');
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: serverList(this.cfg),
        name: `vesperd ${this.hostName} sink ${this.name}`,
        reconnect: false, // see the header: a fresh connection per failure keeps the order
        timeout: this.ackTimeoutMs,
        ...(await connectAuth(this.cfg)),
      });
    } catch (err) {
      throw new VesperError(ErrorCode.BUS_UNAVAILABLE, `nats sink ${this.name}: no server of ${serverList(this.cfg).join(', ')} answered: ${(err as Error).message}`, '', { cause: err });
    }
    try {
      await ensureStream(nc, this.cfg);
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
    this.stats.connects++;
    this.nc = nc;
    this.js = jetstream(nc, { timeout: this.ackTimeoutMs });
    void nc.closed().then(() => {
      if (this.nc === nc) {
        this.nc = null;
        this.js = null;
      }
    });
    return this.js;
  }
}

const NS_PER_MS = 1_000_000;

/** The stream as configured: created when missing (if allowed), checked that it takes our subjects. */
export async function ensureStream(nc: NatsConnection, cfg: NatsParams): Promise<void> {
  const { jetstreamManager, RetentionPolicy, StorageType } = await import('@nats-io/jetstream');
  const { parseSize } = await import('../config/units.js');
  const jsm = await jetstreamManager(nc, { timeout: parseDuration(cfg.ack_timeout) });
  const s = cfg.stream;
  try {
    await jsm.streams.info(s.name);
    return;
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) throw new VesperError(ErrorCode.BUS_UNAVAILABLE, `nats stream ${s.name}: ${(err as Error).message}`, '', { cause: err });
  }
  if (!s.create) throw new VesperError(ErrorCode.BUS_STREAM_MISSING, `nats stream ${s.name} does not exist and stream.create is false`);
  const retention = { limits: RetentionPolicy.Limits, interest: RetentionPolicy.Interest, workqueue: RetentionPolicy.Workqueue }[s.retention];
  await jsm.streams.add({
    name: s.name,
    subjects: [`${cfg.subject_prefix}.>`],
    retention,
    num_replicas: s.replicas,
    duplicate_window: parseDuration(s.duplicate_window) * NS_PER_MS,
    storage: s.storage === 'memory' ? StorageType.Memory : StorageType.File,
    ...(s.max_age !== undefined ? { max_age: parseDuration(s.max_age) * NS_PER_MS } : {}),
    ...(s.max_bytes !== undefined ? { max_bytes: parseSize(s.max_bytes) } : {}),
  });
}
