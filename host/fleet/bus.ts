// The fleet bus as `vesper fleet` reads it: the JetStream stream the hosts' nats sinks publish
// to. Events come back as the sinks sent them (ExportEvent JSON) with the stream's sequence and
// the time the bus stored them, which is the one clock every host's events share.
import type { NatsConnection } from '@nats-io/nats-core';
import type { JetStreamClient } from '@nats-io/jetstream';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { connectAuth, serverList, type NatsParams } from '../export/nats-config.js';
import { isEventSubject, subjectFilter } from '../export/nats-subject.js';
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

const utf8 = new TextDecoder();

/** JetStream API requests (consumer create, info): a server that is down leaves them unanswered. */
const API_TIMEOUT_MS = 5000;
/** The idle heartbeat asked of each pull: the consumer is there even when nothing is new. */
const HEARTBEAT_MS = 1000;
/** No event and no heartbeat for this long: the consumer is gone (its server died), make another. */
const STALL_MS = 5000;
/** Without follow, a read that makes no progress for this long gives up. */
const READ_DEADLINE_MS = 60_000;

/** Where a read is: the last stream sequence handed over, and (without follow) where it ends. */
interface ReadState {
  cursor: number;
  stopAt: number;
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
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
        // reconnect for ever (a follower outlives a server); reads bound themselves (events())
        const nc = await connect({ servers: [server], name: 'vesper fleet', timeout: timeoutMs, maxReconnectAttempts: -1, ...auth });
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
    if (!isEventSubject(this.cfg.subject_prefix, subject)) return null;
    try {
      const e = JSON.parse(utf8.decode(data)) as BusEvent;
      e.streamSeq = seq;
      e.busTimeUs = Math.round(timeNs / 1000);
      return e;
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
   * new ones until the signal aborts. Resolves when done (without follow: once the events stored
   * when the read began have been handed over).
   *
   * The reader is a chain of nats.js ordered consumers, each started after the last sequence
   * handed over, so no event is skipped or handed over twice whatever happens to a consumer. One
   * is needed because an ordered consumer is an R1 ephemeral on one server of the stream's peers,
   * and nats.js does not get it back when that server dies: its idle-heartbeat check asks for the
   * consumer's info, the meta leader answers "consumer is offline", and nats.js only recreates an
   * ordered consumer on "consumer not found", so it asks again every 30 s for ever (a follower
   * stalled for good in the fleet acceptance test). A server before 2.9.12 may also place a new
   * R1 consumer on a peer that is down (nats-server PR 3820): the create then goes unanswered.
   * So a consumer that delivers nothing, not even the heartbeat of its pull, for STALL_MS is
   * dropped and another one made; a create that times out is tried again.
   */
  async events(
    f: BusFilter,
    o: {
      follow: boolean;
      fromSeq?: number;
      /** why the read made a new consumer (a note for stderr) */
      onNote?: (note: string) => void;
      /** once the first consumer is reading: events stored from now on come as they are stored */
      onReading?: () => void;
    },
    onEvent: (e: BusEvent) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const { jetstream } = await import('@nats-io/jetstream');
    const js = jetstream(this.nc, { timeout: API_TIMEOUT_MS });
    const read: ReadState = { cursor: (o.fromSeq ?? 1) - 1, stopAt: Infinity };
    if (!o.follow) {
      // The end of this read: the stream's last sequence now (later events are for -f).
      const jsm = await this.manager();
      try {
        read.stopAt = (await jsm.streams.info(this.cfg.stream.name)).state.last_seq;
      } catch (err) {
        throw this.streamError(err);
      }
      if (read.stopAt <= read.cursor) return;
    }
    // without follow, a read gives up when READ_DEADLINE_MS pass without progress
    let giveUpAt = Date.now() + READ_DEADLINE_MS;
    let failures = 0;
    while (!signal.aborted) {
      if (this.nc.isClosed()) throw new VesperError(ErrorCode.BUS_UNAVAILABLE, 'the connection to the bus closed');
      const from = read.cursor;
      let outcome: string;
      try {
        outcome = await this.readFrom(js, f, read, onEvent, signal, o.onReading);
        o.onReading = undefined;
        failures = 0;
      } catch (err) {
        const e = this.streamError(err);
        if (e.code === ErrorCode.BUS_STREAM_MISSING || (!o.follow && Date.now() >= giveUpAt && read.cursor === from)) throw e;
        failures++;
        outcome = `${e.message}; trying again`;
        await pause(Math.min(2000, 100 * 2 ** failures), signal);
      }
      if (outcome === 'done') return;
      if (read.cursor !== from) giveUpAt = Date.now() + READ_DEADLINE_MS;
      else if (!o.follow && Date.now() >= giveUpAt)
        throw new VesperError(ErrorCode.BUS_UNAVAILABLE, `the bus delivered nothing after stream sequence ${read.cursor} (${outcome})`);
      o.onNote?.(`after stream sequence ${read.cursor}: ${outcome}`);
    }
  }

  /** One ordered consumer from read.cursor + 1: 'done', or why it stopped delivering (a new one is due). */
  private async readFrom(
    js: JetStreamClient,
    f: BusFilter,
    read: ReadState,
    onEvent: (e: BusEvent) => void,
    signal: AbortSignal,
    onReading?: () => void,
  ): Promise<string> {
    const { DeliverPolicy } = await import('@nats-io/jetstream');
    const consumer = await js.consumers.get(this.cfg.stream.name, {
      filter_subjects: subjectFilter(this.cfg.subject_prefix, f),
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: read.cursor + 1,
      // a dropped consumer whose delete did not get through goes by itself
      inactive_threshold: 60_000,
    });
    const drop = (): void => void consumer.delete().catch(() => undefined);
    if (read.stopAt !== Infinity && (await consumer.info(true)).num_pending === 0) {
      drop();
      return 'done';
    }
    const msgs = await consumer.consume({ max_messages: 4096, expires: 5 * HEARTBEAT_MS, idle_heartbeat: HEARTBEAT_MS });
    let aliveAt = Date.now();
    let stalled = false;
    void (async () => {
      // the pull's heartbeats (and its expiry notices) say the consumer is there while idle
      for await (const s of msgs.status()) if (s.type === 'heartbeat' || s.type === 'discard') aliveAt = Date.now();
    })().catch(() => undefined);
    let tickAt = Date.now();
    const watchdog = setInterval(() => {
      const now = Date.now();
      // a tick this late means this process was not running (a loaded machine): not the consumer's fault
      if (now - tickAt > 2 * HEARTBEAT_MS) aliveAt = now;
      tickAt = now;
      if (now - aliveAt < STALL_MS) return;
      stalled = true;
      void msgs.stop();
    }, HEARTBEAT_MS);
    const stop = (): void => void msgs.stop();
    signal.addEventListener('abort', stop, { once: true });
    onReading?.();
    let done = false;
    try {
      for await (const m of msgs) {
        aliveAt = Date.now();
        if (m.seq <= read.cursor) continue; // already handed over (a consumer's own reset re-sends)
        read.cursor = m.seq;
        const e = this.decode(m.subject, m.data, m.seq, m.info.timestampNanos);
        if (e) onEvent(e);
        if (m.seq >= read.stopAt || (read.stopAt !== Infinity && m.info.pending === 0)) {
          done = true;
          break;
        }
      }
    } finally {
      clearInterval(watchdog);
      signal.removeEventListener('abort', stop);
      void msgs.stop();
      drop();
    }
    if (stalled) return `the bus consumer sent nothing, not even a heartbeat, for ${STALL_MS} ms: resuming with a new one`;
    if (done || signal.aborted) return 'done';
    return 'the bus consumer stopped: resuming with a new one'; // nats.js ends a consume on some errors
  }

  private streamError(err: unknown): VesperError {
    if (err instanceof VesperError) return err;
    const msg = (err as Error).message ?? String(err);
    if (/stream not found/i.test(msg))
      return new VesperError(
        ErrorCode.BUS_STREAM_MISSING,
        `stream ${this.cfg.stream.name} not found on the bus: has any host published yet?`,
      );
    return new VesperError(ErrorCode.BUS_UNAVAILABLE, `stream ${this.cfg.stream.name}: ${msg}`, '', { cause: err });
  }
}
