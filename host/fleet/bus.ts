// The fleet bus as `vesper fleet` reads it: the JetStream stream the hosts' nats sinks publish
// to. Events come back as the sinks sent them (ExportEvent JSON) with the stream's sequence and
// the time the bus stored them, which is the one clock every host's events share.
import type { NatsConnection } from '@nats-io/nats-core';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { connectAuth, serverList, type NatsParams } from '../export/nats-config.js';
import { parseSubject, subjectFilter } from '../export/nats-subject.js';
import type { ExportEvent } from '../export/sink.js';

/** One event read from the bus. */
export interface BusEvent extends ExportEvent {
  /** the stream's sequence: one order for the whole fleet */
  streamSeq: number;
  /** when the bus stored it (µs, the bus's clock) */
  busTimeUs: number;
}

export interface BusFilter {
  host?: string;
  vm?: string;
}

type BusConfig = Pick<NatsParams, 'servers' | 'credentials' | 'subject_prefix'> & { stream: { name: string } };

export class FleetBus {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly cfg: BusConfig,
  ) {}

  static async open(cfg: BusConfig, timeoutMs = 5000): Promise<FleetBus> {
    const { connect } = await import('@nats-io/transport-node');
    const auth = await connectAuth(cfg);
    // Each server in turn: nats.js's first connect gives up at the first server that refuses,
    // and a dead node of a healthy cluster must not stop a reader. Once connected, the client
    // learns the cluster's other servers and reconnects to them by itself.
    const errors: string[] = [];
    for (const server of serverList(cfg)) {
      try {
        const nc = await connect({ servers: [server], name: 'vesper fleet', timeout: timeoutMs, ...auth });
        return new FleetBus(nc, cfg);
      } catch (err) {
        errors.push(`${server}: ${(err as Error).message}`);
      }
    }
    throw new VesperError(ErrorCode.BUS_UNAVAILABLE, `no server of the bus answered (${errors.join('; ')})`);
  }

  async close(): Promise<void> {
    await this.nc.close().catch(() => undefined);
  }

  private decode(subject: string, data: Uint8Array, seq: number, timeNs: number): BusEvent | null {
    if (!parseSubject(this.cfg.subject_prefix, subject)) return null;
    try {
      const e = JSON.parse(new TextDecoder().decode(data)) as ExportEvent;
      return { ...e, streamSeq: seq, busTimeUs: Math.round(timeNs / 1000) };
    } catch {
      return null; // not one of ours: skipped
    }
  }

  private async manager() {
    const { jetstreamManager } = await import('@nats-io/jetstream');
    return jetstreamManager(this.nc);
  }

  /** The stream's subjects (host, VM, plugin, event) with their message counts. */
  async subjects(f: BusFilter = {}): Promise<Map<string, number>> {
    const jsm = await this.manager();
    try {
      const si = await jsm.streams.info(this.cfg.stream.name, { subjects_filter: subjectFilter(this.cfg.subject_prefix, f) });
      return new Map(Object.entries(si.state.subjects ?? {}));
    } catch (err) {
      throw this.streamError(err);
    }
  }

  /** The last event stored on one subject. */
  async lastOn(subject: string): Promise<BusEvent | null> {
    const jsm = await this.manager();
    const m = await jsm.streams.getMessage(this.cfg.stream.name, { last_by_subj: subject }).catch(() => null);
    return m ? this.decode(m.subject, m.data, m.seq, m.timestamp ? Date.parse(m.timestamp) * 1e6 : 0) : null;
  }

  /**
   * Every event matching the filter in stream order, handed to onEvent; then, with follow, the
   * new ones until the signal aborts. Resolves when done (without follow: when the backlog read
   * at the start has been handed over).
   */
  async events(f: BusFilter, o: { follow: boolean; fromSeq?: number }, onEvent: (e: BusEvent) => void, signal: AbortSignal): Promise<void> {
    const { jetstream, DeliverPolicy } = await import('@nats-io/jetstream');
    const js = jetstream(this.nc);
    const opts = {
      filter_subjects: subjectFilter(this.cfg.subject_prefix, f),
      ...(o.fromSeq ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: o.fromSeq } : { deliver_policy: DeliverPolicy.All }),
    };
    let consumer;
    try {
      consumer = await js.consumers.get(this.cfg.stream.name, opts);
    } catch (err) {
      throw this.streamError(err);
    }
    const info = await consumer.info(true);
    if (!o.follow && info.num_pending === 0) {
      await consumer.delete().catch(() => undefined);
      return;
    }
    const msgs = await consumer.consume({ max_messages: 4096 });
    const stop = (): void => void msgs.stop();
    signal.addEventListener('abort', stop, { once: true });
    try {
      for await (const m of msgs) {
        const e = this.decode(m.subject, m.data, m.seq, m.info.timestampNanos);
        if (e) onEvent(e);
        if (!o.follow && m.info.pending === 0) break;
      }
    } finally {
      signal.removeEventListener('abort', stop);
      msgs.stop();
      await consumer.delete().catch(() => undefined);
    }
  }

  private streamError(err: unknown): VesperError {
    const msg = (err as Error).message ?? String(err);
    if (/not found/i.test(msg))
      return new VesperError(
        ErrorCode.BUS_STREAM_MISSING,
        `stream ${this.cfg.stream.name} not found on the bus: has any host published yet?`,
      );
    return new VesperError(ErrorCode.BUS_UNAVAILABLE, `stream ${this.cfg.stream.name}: ${msg}`, '', { cause: err });
  }
}
