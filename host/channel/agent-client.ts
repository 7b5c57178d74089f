// The host's end of one agent link: handshake (hello-gate.ts), requests (load, unload,
// parameters; agent-requests.ts), and the record stream turned into typed events,
// de-duplicated by sequence number (record-intake.ts) and acknowledged.
//
// Everything the agent sends is untrusted: bad frames and undecodable messages become
// 'protocolError' events with codes, never exceptions out of the socket handler.
import type { KeyObject } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isBatchFrame } from '../../proto/batch.js';
import { DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, decodeMessage, encodeMessage, type pb } from '../../proto/codec.js';
import { offerHostKey } from '../../proto/enrol.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';
import type { AgentRecord } from '../../proto/record.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { probeOfAgent, type ProbeInfo } from './agent-probes.js';
import { RequestTable } from './agent-requests.js';
import { HelloGate } from './hello-gate.js';
import { IngestBudget, type IngestBudgetOptions } from './ingest-budget.js';
import type { ReadPacer } from './read-pacer.js';
import { RecordIntake } from './record-intake.js';

export type { ProbeInfo } from './agent-probes.js';
export { MAX_PARAM_VALUE, MAX_PROBE_EVENTS, MAX_PROBE_NAME, MAX_PROBE_PARAMS, MAX_PROBE_VERSION } from './agent-probes.js';
export { HELLO_MIN_INTERVAL_MS, MAX_HELLO_STRING } from './hello-gate.js';
export interface AgentClientOptions {
  /** Highest sequence number already held: the agent resends everything after it. */
  resumeAfterSeq?: number;
  /** Decides resumeAfterSeq once the agent has said who it is (same boot, same agent?). */
  resumeFor?: (hello: pb.Hello) => number;
  /** Acknowledge records as soon as the 'record' listeners have run (default true). */
  autoAck?: boolean;
  requestTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  maxFrameBytes?: number;
  /**
   * Ping this often (ms; 0: never). On a virtio-serial port a guest that rebooted, or an
   * agent that restarted, cannot tell that the host is still there; the next ping makes it
   * speak, and the client then sees a second hello on the same link.
   */
  keepaliveMs?: number;
  /**
   * Bytes and records a second this link is read at, at most (ingest-budget.ts): past them the
   * link is paused until the budget has caught up. Unlimited when absent.
   */
  budget?: IngestBudgetOptions;
  /**
   * Told every protocol problem from the first byte on, the handshake's included (a caller that
   * adds its 'protocolError' listener once connectUnix resolved would miss those).
   */
  onProtocolError?: (e: VesperError) => void;
  /**
   * The host key to offer in the answer to every hello, with its proof over the hello's nonce
   * (proto/enrol.ts): an agent not enrolled pins it, an enrolled one checks it. A hello that
   * names other trusted keys fails the handshake (VSP_HOST_KEY_MISMATCH). Absent: no key offered.
   */
  hostKey?: OfferedKey;
}

/** What a host offers agents of its key (host/keys.ts's HostKey is one). */
export interface OfferedKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  id: string;
}

/** What a link without a pacer (a tool, a test) reads into: one buffer of its own. */
const OWN_READ_BYTES = 64 * 1024;

/**
 * What the host may have written to a link that the agent has not read yet. An agent reads
 * what the host sends; one that stops while it makes the host write (answers, pushes) would
 * otherwise grow the host's buffers without end. Past this, the link is closed.
 */
export const MAX_UNSENT_BYTES = 8 << 20;
/**
 * The largest message other than a record batch the host decodes from an agent. A hello, a load
 * result or a probe list is a few kilobytes; only batches need the whole maximum frame size. A
 * larger one is refused before it is decoded: decoding a 1 MiB hello of long strings took the
 * daemon's one thread 40-70 ms (and its garbage as long again), during which no other guest's
 * records moved.
 */
export const MAX_CONTROL_FRAME = 64 * 1024;

// Typed event signatures for the class below (the usual EventEmitter pattern).
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface AgentClient {
  on(ev: 'record', fn: (r: AgentRecord) => void): this;
  on(ev: 'batch', fn: (records: AgentRecord[]) => void): this;
  on(ev: 'protocolError', fn: (e: VesperError) => void): this;
  on(ev: 'close', fn: (why: string) => void): this;
  /** every hello, the first and any later one (the agent restarted behind this link) */
  on(ev: 'hello', fn: (h: pb.Hello) => void): this;
}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class AgentClient extends EventEmitter {
  hello!: pb.Hello;
  readonly probes = new Map<number, ProbeInfo>();
  /** times the link was paused for being over its budget, and for how long in all (ms) */
  throttles = 0;
  throttledMs = 0;
  private readonly budget: IngestBudget | null;
  private resumeTimer: NodeJS.Timeout | null = null;
  private readonly requests: RequestTable;
  private readonly intake: RecordIntake;
  private readonly gate: HelloGate;
  private readonly decoder: FrameDecoder;
  private closed = false;
  private readonly opts: Required<Omit<AgentClientOptions, 'resumeFor' | 'budget' | 'onProtocolError' | 'hostKey'>> &
    Pick<AgentClientOptions, 'resumeFor' | 'hostKey'>;

  constructor(
    readonly stream: Duplex,
    opts: AgentClientOptions & { fedExternally?: boolean } = {},
  ) {
    super();
    if (opts.onProtocolError) this.on('protocolError', opts.onProtocolError);
    const fedExternally = opts.fedExternally === true;
    this.budget = opts.budget && !new IngestBudget(opts.budget).unlimited ? new IngestBudget(opts.budget) : null;
    this.opts = {
      resumeAfterSeq: opts.resumeAfterSeq ?? 0,
      autoAck: opts.autoAck ?? true,
      requestTimeoutMs: opts.requestTimeoutMs ?? 30_000,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 15_000,
      maxFrameBytes: opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      resumeFor: opts.resumeFor,
      keepaliveMs: opts.keepaliveMs ?? 0,
      hostKey: opts.hostKey,
    };
    this.requests = new RequestTable(this.opts.requestTimeoutMs);
    const problem = (e: VesperError): void => void this.emit('protocolError', e);
    this.intake = new RecordIntake(this.opts.resumeAfterSeq, this.probes, problem);
    this.gate = new HelloGate(this.opts.handshakeTimeoutMs, {
      answer: (h) => this.onHello(h),
      problem,
      close: () => this.close(),
      isClosed: () => this.closed,
    });
    this.on('protocolError', (e: VesperError) => this.gate.notice(e));
    if (this.opts.keepaliveMs > 0) this.keepalive(this.opts.keepaliveMs);
    this.decoder = new FrameDecoder({
      maxFrameBytes: this.opts.maxFrameBytes,
      onFrame: (p) => this.onFrame(p),
      onError: problem,
    });
    if (!fedExternally) stream.on('data', (c: Buffer) => this.read(c));
    // On a virtio-serial port the guest cannot see us connect; these bytes are how it
    // learns, and it answers with its hello. Elsewhere the agent just answers the ping.
    this.send({ reqId: 0, ping: { nonce: 0, sentMonoNs: Number(process.hrtime.bigint()) } });
    stream.on('error', (err) => this.emit('protocolError', new VesperError(ErrorCode.DISCONNECTED, err.message)));
    stream.on('close', () => this.shutdown('link closed'));
  }

  /** Highest sequence number received in order; everything up to it is held. */
  get lastSeq(): number {
    return this.intake.lastSeq;
  }
  get duplicates(): number {
    return this.intake.duplicates;
  }
  get gaps(): number {
    return this.intake.gaps;
  }
  get recordsReceived(): number {
    return this.intake.recordsReceived;
  }
  /** record batches that came before the hello was answered (an earlier link's), dropped unread */
  staleBatches = 0;
  /** records seen in batches, duplicates and refused ones included: what the budget counts */
  get recordsSeen(): number {
    return this.intake.recordsSeen;
  }

  /**
   * A ping every `ms` the link carried no frame: on a virtio-serial port a guest that rebooted,
   * or an agent that restarted, cannot tell that the host is still there; the ping makes it speak.
   */
  private keepalive(ms: number): void {
    // A link that carried frames since the last tick needs no ping: the agent is there and
    // knows the host is.
    let framesAtTick = -1;
    const k = setInterval(() => {
      if (this.decoder.framesOk === framesAtTick) this.send({ reqId: 0, ping: { nonce: 0, sentMonoNs: Number(process.hrtime.bigint()) } });
      framesAtTick = this.decoder.framesOk;
    }, ms);
    k.unref();
    this.once('close', () => clearInterval(k));
  }

  /**
   * Bytes read from the link, for a client whose stream does not emit 'data' (connectUnix reads
   * into a shared buffer). The chunk is only valid during the call.
   */
  feed(chunk: Buffer): void {
    this.read(chunk);
  }

  /** One read from the link: decoded, then charged to the budget, which may pause the link. */
  private read(chunk: Buffer): void {
    if (this.closed) return;
    const seen = this.recordsSeen;
    this.decoder.push(chunk);
    if (this.budget === null || this.closed) return;
    const wait = this.budget.charge(chunk.length, this.recordsSeen - seen);
    if (wait <= 0 || this.resumeTimer !== null) return;
    // Not read for a while: the guest's writes block, its records wait in its ring. Reads
    // already under way may still come; they are charged, and the next wait is longer.
    const ms = Math.max(1, Math.ceil(wait));
    this.throttles++;
    this.throttledMs += ms;
    if (this.throttles === 1)
      this.emit(
        'protocolError',
        new VesperError(
          ErrorCode.INGEST_THROTTLED,
          `over its ingest budget (${this.budget.o.recordsPerS || 'any'} records/s, ${this.budget.o.bytesPerS || 'any'} bytes/s): reads paused`,
        ),
      );
    this.stream.pause();
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = null;
      if (!this.closed) this.stream.resume();
    }, ms);
  }

  /** Connects to an agent listening on a unix socket and completes the handshake. */
  static async connectUnix(
    path: string,
    opts: AgentClientOptions & { connectTimeoutMs?: number; /** counts this link's reads (the daemon's) */ pacer?: ReadPacer } = {},
  ): Promise<AgentClient> {
    const pacer = opts.pacer ?? null;
    // Reads land in one buffer shared by the daemon's links (the pacer's), not a new Buffer per read
    // through the stream machinery: with a thousand guests sending a frame each every 10 ms,
    // that machinery was a sixth of vesperd's CPU. Until the client exists, reads are kept.
    let feed: ((chunk: Buffer) => void) | null = null;
    const early: Buffer[] = [];
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({
        path,
        onread: {
          buffer: pacer !== null ? pacer.readBuffer : Buffer.allocUnsafe(OWN_READ_BYTES),
          callback: (n: number, buf: Uint8Array) => {
            if (pacer !== null) pacer.noteRead();
            const chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
            if (feed !== null) feed(chunk);
            else early.push(Buffer.from(chunk));
            return true;
          },
        },
      });
      const t = setTimeout(() => {
        s.destroy();
        reject(new VesperError(ErrorCode.CONNECT_FAILED, `timed out connecting to ${path}`));
      }, opts.connectTimeoutMs ?? 5000);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(new VesperError(ErrorCode.CONNECT_FAILED, `cannot connect to agent at ${path}: ${err.message}`));
      });
    });
    const c = new AgentClient(sock, { ...opts, fedExternally: true });
    feed = (chunk) => c.feed(chunk);
    for (const b of early) c.feed(b);
    try {
      await c.handshake();
    } catch (err) {
      c.close();
      throw err;
    }
    return c;
  }

  /**
   * Resolves once the agent's hello is answered, if the link is still up then: frames that came
   * in the same read as the hello may already have closed it (a second hello the host refuses),
   * and a caller that took such a link for a live one would wait for a 'close' that has passed.
   */
  handshake(): Promise<void> {
    return this.gate.ready.then(() => {
      if (this.closed) throw new VesperError(ErrorCode.DISCONNECTED, 'agent link closed right after the handshake');
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---------------------------------------------------------------- requests

  async load(
    module: pb.IProbeModule,
    o: { instances?: number; params?: Record<string, string>; instanceParams?: Record<number, Record<string, string>> } = {},
  ): Promise<ProbeInfo[]> {
    const f = await this.request({
      loadProbe: {
        module,
        instances: o.instances ?? 1,
        params: kv(o.params),
        instanceParams: Object.entries(o.instanceParams ?? {}).map(([i, p]) => ({ instance: Number(i), params: kv(p) })),
      },
    });
    const r = f.loadResult;
    if (!r?.ok) throw VesperError.fromWire(r?.error);
    return (r.loaded ?? []).map((l) => this.remember(l));
  }

  async unload(handlesOrName: number[] | string): Promise<number[]> {
    const f = await this.request({
      unloadProbe: typeof handlesOrName === 'string' ? { name: handlesOrName } : { handles: handlesOrName },
    });
    const r = f.unloadResult;
    if (!r?.ok) throw VesperError.fromWire(r?.error);
    const unloaded = r.unloaded ?? [];
    for (const h of unloaded) this.probes.delete(h);
    return unloaded;
  }

  async setParams(handle: number, params: Record<string, string>): Promise<ProbeInfo> {
    const f = await this.request({ setParams: { handle, params: kv(params) } });
    const r = f.setParamsResult;
    if (!r?.ok || !r.probe) throw VesperError.fromWire(r?.error);
    return this.remember(r.probe);
  }

  /** What the agent runs now; it replaces what the client knew (a hello's list may be stale). */
  async list(): Promise<ProbeInfo[]> {
    const f = await this.request({ listProbes: {} });
    this.probes.clear();
    return (f.probeList?.loaded ?? []).map((l) => this.remember(l));
  }

  /** Round trip through the agent, in ms. */
  async ping(): Promise<number> {
    const t0 = process.hrtime.bigint();
    await this.request({ ping: { nonce: Number(t0 & 0xffffffffn), sentMonoNs: Number(t0) } });
    return Number(process.hrtime.bigint() - t0) / 1e6;
  }

  /**
   * The agent's monotonic clock relative to ours: guest = host + offsetNs, within rtt/2.
   * The sample with the shortest round trip out of `n` is the tightest bound.
   */
  async clockOffset(n = 10): Promise<{ offsetNs: number; rttMs: number }> {
    let best = { offsetNs: 0, rttMs: Infinity };
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      const f = await this.request({ ping: { nonce: i + 1, sentMonoNs: Number(t0) } });
      const t1 = process.hrtime.bigint();
      const rttMs = Number(t1 - t0) / 1e6;
      if (rttMs < best.rttMs) best = { offsetNs: Number(f.pong?.recvMonoNs ?? 0) - Number((t0 + t1) / 2n), rttMs };
    }
    return best;
  }

  /** Acknowledges everything up to seq (with autoAck off, once the records are safe). */
  ack(seq = this.lastSeq): void {
    this.send({ ack: { seq } });
  }

  close(): void {
    this.stream.destroy();
    this.shutdown('closed by host');
  }

  // ---------------------------------------------------------------- internals

  /** A probe the agent says it runs, checked (agent-probes.ts): a refused one is told, and known by handle only. */
  private remember(l: pb.ILoadedProbe): ProbeInfo {
    const { info, refused } = probeOfAgent(l);
    if (refused) {
      this.emit('protocolError', refused);
      return info;
    }
    this.probes.set(info.handle, info);
    return info;
  }

  private request(body: pb.IFrame): Promise<pb.Frame> {
    if (this.closed) return Promise.reject(new VesperError(ErrorCode.DISCONNECTED, 'agent link is closed'));
    return this.requests.open(body, (f) => this.send(f));
  }

  private send(f: pb.IFrame): void {
    if (this.closed) return;
    this.stream.write(encodeFrame(encodeMessage(f)));
    if (this.stream.writableLength > MAX_UNSENT_BYTES) {
      this.emit(
        'protocolError',
        new VesperError(ErrorCode.DISCONNECTED, `agent left ${this.stream.writableLength} bytes unread; link closed`),
      );
      this.close();
    }
  }

  private shutdown(why: string): void {
    if (this.closed) return;
    this.closed = true;
    if (this.resumeTimer) clearTimeout(this.resumeTimer);
    this.decoder.discardPartial('ended');
    this.requests.failAll(why);
    this.gate.closed(why);
    this.emit('close', why);
  }

  // ---------------------------------------------------------------- frames from the agent

  private onFrame(payload: Buffer): void {
    // A closed link's last bytes (the frames found behind an incomplete one when it ended) are
    // not read: nothing on it can be acknowledged any more, and the agent sends it all again.
    if (this.closed) return;
    // Record batches, nearly every frame: each record decoded from its own bytes.
    const batch = isBatchFrame(payload);
    if (batch && !this.gate.seen) {
      // Written for a link before this one (a virtio-serial port keeps what the guest wrote
      // while no host held it): the resume point is not known yet, so nothing of it may be
      // stored or acknowledged. The agent sends it all again after the answer to its hello.
      this.staleBatches++;
      return;
    }
    if (batch) {
      const out = this.intake.fromBatchFrame(payload);
      if (out !== null) return this.deliver(out);
    }
    const f = this.decodeControl(payload, batch);
    if (f === null) return;
    switch (f.body) {
      case 'batch':
        if (!this.gate.seen) return void this.staleBatches++;
        return this.deliver(this.intake.fromBatchMessage(f.batch!));
      case 'hello':
        return this.gate.take(f.hello! as pb.Hello);
      case 'error':
        return void this.emit('protocolError', VesperError.fromWire(f.error));
      default:
        return this.onAnswer(f);
    }
  }

  /** A message other than a record batch, decoded; null (and told) when it is too large or undecodable. */
  private decodeControl(payload: Buffer, batch: boolean): pb.Frame | null {
    if (payload.length > MAX_CONTROL_FRAME && !batch) {
      this.emit(
        'protocolError',
        new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `a ${payload.length}-byte message that is no record batch: not decoded`),
      );
      return null;
    }
    try {
      // a copy: the payload is a view into a read buffer that is reused, and a decoded message's
      // bytes fields (a probe's digest) would be views into it too
      return decodeMessage(Buffer.from(payload));
    } catch (err) {
      this.emit('protocolError', VesperError.from(err, ErrorCode.MESSAGE_DECODE));
      return null;
    }
  }

  /** The answer to a request of ours (or the pong to the first ping); anything else is unsolicited. */
  private onAnswer(f: pb.Frame): void {
    if (this.requests.settle(f)) return;
    if (f.body === 'pong' && f.reqId === 0) {
      // The answer to our first ping (or a keepalive's). On a new link the agent's hello comes
      // first; a pong without one is an agent that holds a link from before: a guest restored
      // from a save or migrated in, whose virtio-serial port never saw the host leave. Hung up,
      // so that it sees the host go and answers the next link with its hello.
      if (!this.gate.seen) {
        this.stream.destroy();
        this.shutdown('the agent answered as on a link it already had (a restored or migrated guest): linking again');
      }
      return;
    }
    this.emit(
      'protocolError',
      new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `unsolicited ${f.body ?? 'empty'} message (request ${f.reqId})`),
    );
  }

  /** A hello answered (hello-gate.ts decides which): resume point, the probes it says it runs, the ack, and 'hello' to listeners. */
  private onHello(h: pb.Hello): void {
    this.hello = h;
    const key = this.opts.hostKey;
    const offer = key ? offerHostKey(key.privateKey, key.publicKey, h.enrolNonce ?? new Uint8Array()) : {};
    const trusted = h.trustedKeyIds ?? [];
    if (key && trusted.length > 0 && !trusted.includes(key.id)) {
      // The agent trusts another host's key: it will refuse us. It is answered all the same, so
      // that it sees our key and says so in its own log, and the link ends here.
      this.send({ helloAck: { protocolVersion: PROTOCOL_VERSION, hostVersion: VESPER_VERSION, ackedSeq: 0, ...offer } });
      const e = new VesperError(
        ErrorCode.HOST_KEY_MISMATCH,
        `the agent trusts host key ${trusted.join(', ')}, not this host's key ${key.id} (it was enrolled by another host, or this host's key changed): refused until root in the guest re-enrols it (vesper-agent enrol --reset), or for an SSH target, until \`vesper agent install\` gives it this key`,
      );
      this.gate.refused(e);
      this.close();
      return;
    }
    if (this.opts.resumeFor) this.intake.lastSeq = this.opts.resumeFor(h);
    this.probes.clear();
    for (const l of h.loaded ?? []) this.remember(l);
    this.send({
      helloAck: {
        protocolVersion: PROTOCOL_VERSION,
        hostVersion: VESPER_VERSION,
        ackedSeq: this.lastSeq,
        maxFrameBytes: this.opts.maxFrameBytes,
        ...offer,
      },
    });
    this.gate.answered();
    this.emit('hello', h);
  }

  /** The records of one frame, to listeners. */
  private deliver(out: AgentRecord[]): void {
    if (!out.length) return;
    if (this.listenerCount('record')) for (const r of out) this.emit('record', r);
    this.emit('batch', out);
    if (this.opts.autoAck) this.ack();
  }
}

function kv(o: Record<string, string> | undefined): pb.IParamValue[] {
  return Object.entries(o ?? {}).map(([name, value]) => ({ name, value: String(value) }));
}
