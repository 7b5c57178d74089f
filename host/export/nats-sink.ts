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
import type { MsgHdrs, NatsConnection, Subscription } from '@nats-io/nats-core';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { parseDuration } from '../config/units.js';
import { connectAuth, serverList, type NatsParams } from './nats-config.js';
import { eventSubject } from './nats-subject.js';
import type { ExportEvent, ExportSink } from './sink.js';

/** Counters for status and metrics. */
export interface NatsSinkStats {
  /** events the stream stored */
  published: number;
  /** acks that said "duplicate": a resend the stream had already */
  duplicates: number;
  connects: number;
}

/** JetStream's answer to a publish. */
interface PubAckJson {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  error?: { code?: number; description?: string };
}

/** One connection and its ack inbox: every publish's reply subject is `<inbox>.<n>`. */
interface Link {
  nc: NatsConnection;
  inbox: string;
  sub: Subscription;
  nextAck: number;
  headers: () => MsgHdrs;
  /** the batch in flight (one at a time: the framework delivers one batch per sink) */
  waiting: { ack: (n: number, a: PubAckJson) => void; fail: (err: Error) => void } | null;
}

export class NatsSink implements ExportSink {
  readonly kind = 'nats';
  readonly name: string;
  readonly stats: NatsSinkStats = { published: 0, duplicates: 0, connects: 0 };
  private link: Link | null = null;
  private connecting: Promise<Link> | null = null;
  private readonly ackTimeoutMs: number;

  constructor(
    name: string,
    /** the entry as configured: a reload compares it (exporter.ts sameConfig) */
    readonly config: NatsParams,
    /** this host's name (the eventIds' host), for the connection's name */
    private readonly hostName: string = os.hostname(),
  ) {
    this.name = name;
    this.ackTimeoutMs = parseDuration(config.ack_timeout);
  }

  async deliver(batch: readonly ExportEvent[], signal: AbortSignal): Promise<void> {
    if (!batch.length) return;
    signal.throwIfAborted();
    const link = await this.client();
    const stream = this.config.stream.name;
    // One reply subject per event on the connection's ack inbox, one timer for the batch: the
    // client's js.publish() makes a request (a timer and a promise) per event, ten times slower.
    const pending = new Map<number, ExportEvent>();
    const acks = new Promise<{ stored: number; duplicates: number }>((resolve, reject) => {
      let stored = 0;
      let duplicates = 0;
      const timer = setTimeout(
        () => fail(new Error(`${pending.size} of ${batch.length} events not acknowledged within ${this.ackTimeoutMs} ms`)),
        this.ackTimeoutMs,
      );
      const fail = (err: Error): void => {
        clearTimeout(timer);
        link.waiting = null;
        reject(err);
      };
      link.waiting = {
        ack: (k, a) => {
          const e = pending.get(k);
          if (e === undefined) return; // an ack of an earlier, failed batch
          pending.delete(k);
          if (a.error) return fail(new Error(`JetStream refused ${e.eventId}: ${a.error.description ?? a.error.code}`));
          if (a.stream !== stream) return fail(new Error(`stored in stream ${String(a.stream)}, not ${stream}: subjects overlap`));
          if (a.duplicate) duplicates++;
          else stored++;
          if (!pending.size) {
            clearTimeout(timer);
            link.waiting = null;
            resolve({ stored, duplicates });
          }
        },
        fail,
      };
    });
    const onAbort = (): void => link.waiting?.fail(new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const base = link.nextAck;
      link.nextAck += batch.length;
      batch.forEach((e, i) => {
        pending.set(base + i, e);
        const h = link.headers();
        h.set('Nats-Msg-Id', e.eventId);
        const subject = eventSubject(this.config.subject_prefix, { host: e.host, vm: e.vm, plugin: e.plugin, event: e.event });
        link.nc.publish(subject, JSON.stringify(e), { reply: `${link.inbox}.${base + i}`, headers: h });
      });
      const r = await acks.catch(async (err: Error) => {
        // A lost ack may hide a lost publish ahead of stored ones: start over on a new connection.
        await this.dropConnection();
        throw new VesperError(ErrorCode.BUS_PUBLISH_FAILED, `nats sink ${this.name}: ${err.message}`, '', { cause: err });
      });
      this.stats.published += r.stored;
      this.stats.duplicates += r.duplicates;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Connects now (and makes the stream if it is missing) rather than at the first deliver(). */
  async open(): Promise<void> {
    await this.client();
  }

  async close(): Promise<void> {
    const l = this.link;
    this.link = null;
    if (l) await l.nc.drain().catch(() => l.nc.close());
  }

  private async dropConnection(): Promise<void> {
    const l = this.link;
    this.link = null;
    if (l) await l.nc.close().catch(() => undefined);
  }

  private client(): Promise<Link> {
    if (this.link && !this.link.nc.isClosed()) return Promise.resolve(this.link);
    this.connecting ??= this.connect().finally(() => (this.connecting = null));
    return this.connecting;
  }

  private async connect(): Promise<Link> {
    const { connect } = await import('@nats-io/transport-node');
    const { headers, createInbox } = await import('@nats-io/nats-core');
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: serverList(this.config),
        name: `vesperd ${this.hostName} sink ${this.name}`,
        reconnect: false, // see the header: a fresh connection per failure keeps the order
        timeout: this.ackTimeoutMs,
        ...(await connectAuth(this.config)),
      });
    } catch (err) {
      throw new VesperError(
        ErrorCode.BUS_UNAVAILABLE,
        `nats sink ${this.name}: no server of ${serverList(this.config).join(', ')} answered: ${(err as Error).message}`,
        '',
        { cause: err },
      );
    }
    try {
      await ensureStream(nc, this.config);
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
    this.stats.connects++;
    const inbox = createInbox();
    const decoder = new TextDecoder();
    const link: Link = { nc, inbox, nextAck: 0, headers, waiting: null, sub: null as unknown as Subscription };
    link.sub = nc.subscribe(`${inbox}.*`, {
      callback: (err, m) => {
        if (err) return link.waiting?.fail(err);
        const n = Number(m.subject.slice(inbox.length + 1));
        let a: PubAckJson;
        try {
          a = JSON.parse(decoder.decode(m.data)) as PubAckJson;
        } catch {
          a = { error: { description: `an ack that is not JSON (${m.data.length} bytes)` } };
        }
        // no responders: a status message with no stream behind the subject
        if (m.headers?.hasError) a = { error: { code: m.headers.code, description: m.headers.description || 'no responders' } };
        link.waiting?.ack(n, a);
      },
    });
    await nc.flush();
    this.link = link;
    void nc.closed().then((err) => {
      link.waiting?.fail(new Error(`connection closed${err ? `: ${err.message}` : ''}`));
      if (this.link === link) this.link = null;
    });
    return link;
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
    if (!/not found/i.test((err as Error).message))
      throw new VesperError(ErrorCode.BUS_UNAVAILABLE, `nats stream ${s.name}: ${(err as Error).message}`, '', { cause: err });
  }
  if (!s.create) throw new VesperError(ErrorCode.BUS_STREAM_MISSING, `nats stream ${s.name} does not exist and stream.create is false`);
  const retention = { limits: RetentionPolicy.Limits, interest: RetentionPolicy.Interest, workqueue: RetentionPolicy.Workqueue }[
    s.retention
  ];
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
