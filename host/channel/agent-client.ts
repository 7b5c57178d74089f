// The host's end of one agent link: handshake, requests (load, unload, parameters), and the
// record stream turned into typed events, de-duplicated by sequence number and acknowledged.
//
// Everything the agent sends is untrusted: bad frames and undecodable messages become
// 'protocolError' events with codes, never exceptions out of the socket handler.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isBatchFrame, readRecordHeader, splitBatchFrame, type RecordHeader } from '../../proto/batch.js';
import { DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, decodeMessage, encodeMessage, v1, type pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';
import { AgentRecord, type RecordKind } from '../../proto/record.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { IngestBudget, type IngestBudgetOptions } from './ingest-budget.js';
import { HOST_PLUGIN_NAMES, isName } from '../../contract/names.js';
import type { ReadPacer } from './read-pacer.js';

export interface ProbeInfo {
  handle: number;
  name: string;
  instance: number;
  version: string;
  params: Record<string, string>;
  events: Map<number, string>;
  /** the module's digest as the agent reports it (hex; '' when it gave none or an overlong one) */
  digest: string;
}

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
}

/**
 * The buffer every unix-socket link reads into (connectUnix). One is enough: a read is handled
 * to its end before the next begins, and nothing keeps a view into it past its handling (the
 * frame decoder copies an incomplete frame, the client copies a frame it keeps).
 */
const SHARED_READ = Buffer.allocUnsafe(256 * 1024);

/**
 * A second hello on a link is an agent that restarted behind it, which takes far longer than
 * this; hellos closer together are coalesced (the last one answered when the time is up), so
 * that a flood of them costs one answer and one probe push a second, not one per hello.
 */
export const HELLO_MIN_INTERVAL_MS = 1000;
/**
 * What the host may have written to a link that the agent has not read yet. An agent reads
 * what the host sends; one that stops while it makes the host write (answers, pushes) would
 * otherwise grow the host's buffers without end. Past this, the link is closed.
 */
export const MAX_UNSENT_BYTES = 8 << 20;
/**
 * The longest a hello's identity strings may be. A boot id is a 36-character UUID, a hostname
 * and a kernel release fit in 64: the boot id and pid name every stored record's agent run, so
 * a hello with a 100 KB boot id would make every row of that guest 100 KB.
 */
export const MAX_HELLO_STRING = 256;
/**
 * The largest message other than a record batch the host decodes from an agent. A hello, a load
 * result or a probe list is a few kilobytes; only batches need the whole maximum frame size. A
 * larger one is refused before it is decoded: decoding a 1 MiB hello of long strings took the
 * manager's one thread 40-70 ms (and its garbage as long again), during which no other guest's
 * records moved.
 */
export const MAX_CONTROL_FRAME = 64 * 1024;
/** The longest probe name the host takes from an agent; event and parameter names too. */
export const MAX_PROBE_NAME = 64;
/**
 * What else the host takes from an agent about a probe it runs: the version (a semver string),
 * its parameters (the host's own values, echoed back: a kprobe's fetch arguments are the
 * longest), and how many events and parameters. A probe the agent describes beyond these is
 * refused like a probe with a bad name: a guest must not make the host hold (or `vesper status`
 * print, or every stored event carry) a megabyte per probe.
 */
export const MAX_PROBE_VERSION = 64;
export const MAX_PARAM_VALUE = 4096;
export const MAX_PROBE_PARAMS = 64;
export const MAX_PROBE_EVENTS = 256;

interface Pending {
  resolve: (f: pb.Frame) => void;
  reject: (e: VesperError) => void;
  timer: NodeJS.Timeout;
}

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
  /** Highest sequence number received in order; everything up to it is held. */
  lastSeq: number;
  duplicates = 0;
  gaps = 0;
  recordsReceived = 0;
  /** records seen in batches, duplicates and refused ones included: what the budget counts */
  recordsSeen = 0;
  /** times the link was paused for being over its budget, and for how long in all (ms) */
  throttles = 0;
  throttledMs = 0;
  private readonly budget: IngestBudget | null;
  private resumeTimer: NodeJS.Timeout | null = null;
  private nextReq = 1;
  private lastHelloAt = 0;
  private heldHello: pb.Hello | null = null;
  private helloTimer: NodeJS.Timeout | null = null;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder: FrameDecoder;
  private closed = false;
  /** the first protocol problem before the agent's hello: what the failed handshake is named by */
  private preHelloProblem: VesperError | null = null;
  private helloSeen = false;
  private readonly ready: Promise<void>;
  private readonly opts: Required<Omit<AgentClientOptions, 'resumeFor' | 'budget' | 'onProtocolError'>> &
    Pick<AgentClientOptions, 'resumeFor'>;

  constructor(
    readonly stream: Duplex,
    opts: AgentClientOptions & { fedExternally?: boolean } = {},
  ) {
    super();
    if (opts.onProtocolError) this.on('protocolError', opts.onProtocolError);
    // The first problem before the hello names a handshake that then fails (times out, or the link
    // closes): garbage, an oversized frame, another protocol version are not a silent agent. The
    // link is not closed for it here: a virtio-serial port may hold the end of what the guest
    // wrote before we connected, and the hello comes after it.
    this.on('protocolError', (e: VesperError) => {
      if (!this.helloSeen && this.preHelloProblem === null && e.code !== ErrorCode.INGEST_THROTTLED) this.preHelloProblem = e;
    });
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
    };
    if (this.opts.keepaliveMs > 0) {
      // A link that carried frames since the last tick needs no ping: the agent is there and
      // knows the host is.
      let framesAtTick = -1;
      const k = setInterval(() => {
        if (this.decoder.framesOk === framesAtTick)
          this.send({ reqId: 0, ping: { nonce: 0, sentMonoNs: Number(process.hrtime.bigint()) } });
        framesAtTick = this.decoder.framesOk;
      }, this.opts.keepaliveMs);
      k.unref();
      this.once('close', () => clearInterval(k));
    }
    this.lastSeq = this.opts.resumeAfterSeq;
    this.decoder = new FrameDecoder({
      maxFrameBytes: this.opts.maxFrameBytes,
      onFrame: (p) => this.onFrame(p),
      onError: (e) => this.emit('protocolError', e),
    });
    let helloResolve!: () => void;
    let helloReject!: (e: VesperError) => void;
    this.ready = new Promise<void>((res, rej) => {
      helloResolve = res;
      helloReject = rej;
    });
    // Nobody may be waiting on the handshake (a caller that only listens for records):
    // its failure must not become an unhandled rejection.
    this.ready.catch(() => undefined);
    /** why the handshake failed: the problem seen before it, if any, else `fallback` */
    const named = (fallback: VesperError): VesperError => {
      const p = this.preHelloProblem;
      return p ? new VesperError(p.code, `before the handshake: ${p.message} (then: ${fallback.message})`, p.detail) : fallback;
    };
    const t = setTimeout(
      () =>
        helloReject(named(new VesperError(ErrorCode.HANDSHAKE_TIMEOUT, `agent sent no hello within ${this.opts.handshakeTimeoutMs} ms`))),
      this.opts.handshakeTimeoutMs,
    );
    this.once('hello', () => {
      clearTimeout(t);
      helloResolve();
    });
    this.once('close', (why: string) => {
      clearTimeout(t);
      helloReject(named(new VesperError(ErrorCode.DISCONNECTED, `link closed before the handshake: ${why}`)));
    });
    if (!fedExternally) stream.on('data', (c: Buffer) => this.read(c));
    // On a virtio-serial port the guest cannot see us connect; these bytes are how it
    // learns, and it answers with its hello. Elsewhere the agent just answers the ping.
    this.send({ reqId: 0, ping: { nonce: 0, sentMonoNs: Number(process.hrtime.bigint()) } });
    stream.on('error', (err) => this.emit('protocolError', new VesperError(ErrorCode.DISCONNECTED, err.message)));
    stream.on('close', () => this.shutdown('link closed'));
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
    // Reads land in one buffer shared by every link (see SHARED_READ), not a new Buffer per read
    // through the stream machinery: with a thousand guests sending a frame each every 10 ms,
    // that machinery was a sixth of the manager's CPU. Until the client exists, reads are kept.
    let feed: ((chunk: Buffer) => void) | null = null;
    const early: Buffer[] = [];
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({
        path,
        onread: {
          buffer: SHARED_READ,
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
    return this.ready.then(() => {
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

  /**
   * A probe the agent says it runs. The agent names it, so the name is checked: one the host's
   * own plugins use, or no name at all, is refused (the probe is not remembered, its records are
   * told by handle), and so are event names that are no names.
   */
  private remember(l: pb.ILoadedProbe): ProbeInfo {
    const handle = l.handle ?? 0;
    const name = l.name ?? '';
    const version = l.version ?? '';
    const params = l.params ?? [];
    const events = l.events ?? [];
    const tooLong =
      version.length > MAX_PROBE_VERSION
        ? `a ${version.length}-character version`
        : params.length > MAX_PROBE_PARAMS
          ? `${params.length} parameters`
          : events.length > MAX_PROBE_EVENTS
            ? `${events.length} events`
            : params.some((p) => (p.name ?? '').length > MAX_PROBE_NAME || (p.value ?? '').length > MAX_PARAM_VALUE)
              ? 'an overlong parameter'
              : '';
    if (tooLong !== '' || handle === 0 || name.length > MAX_PROBE_NAME || !isName(name) || HOST_PLUGIN_NAMES.has(name)) {
      this.emit(
        'protocolError',
        new VesperError(
          ErrorCode.PROTOCOL_UNEXPECTED,
          `agent claims a probe ${JSON.stringify(name.slice(0, 64))}${tooLong ? ` with ${tooLong}` : ''} at handle ${handle}: refused, its records are told by handle`,
        ),
      );
      // nothing of what it sent is kept: a refused probe is its handle
      return { handle, name: `handle-${handle}`, instance: l.instance ?? 0, version: '', params: {}, events: new Map(), digest: '' };
    }
    const info: ProbeInfo = {
      handle,
      name,
      instance: l.instance ?? 0,
      version,
      params: Object.fromEntries(params.map((p) => [p.name ?? '', p.value ?? ''])),
      digest: l.digest && l.digest.length <= 64 ? Buffer.from(l.digest).toString('hex') : '',
      // an event name is a name, and no longer than a probe's: every stored event of it carries it
      events: new Map(
        events.filter((e) => (e.name ?? '').length <= MAX_PROBE_NAME && isName(e.name ?? '')).map((e) => [e.id ?? 0, e.name ?? '']),
      ),
    };
    this.probes.set(handle, info);
    return info;
  }

  private request(body: pb.IFrame): Promise<pb.Frame> {
    if (this.closed) return Promise.reject(new VesperError(ErrorCode.DISCONNECTED, 'agent link is closed'));
    const reqId = this.nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(reqId);
        reject(
          new VesperError(
            ErrorCode.REQUEST_TIMEOUT,
            `agent did not answer request ${Object.keys(body)[0]} within ${this.opts.requestTimeoutMs} ms`,
          ),
        );
      }, this.opts.requestTimeoutMs);
      this.pending.set(reqId, { resolve, reject, timer });
      this.send({ ...body, reqId });
    });
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
    if (this.helloTimer) clearTimeout(this.helloTimer);
    if (this.resumeTimer) clearTimeout(this.resumeTimer);
    this.decoder.discardPartial('ended');
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new VesperError(ErrorCode.DISCONNECTED, `agent link closed: ${why}`));
    }
    this.pending.clear();
    this.emit('close', why);
  }

  private onFrame(payload: Buffer): void {
    // A closed link's last bytes (the frames found behind an incomplete one when it ended) are
    // not read: nothing on it can be acknowledged any more, and the agent sends it all again.
    if (this.closed) return;
    // Record batches, nearly every frame: each record is decoded from its own bytes, which
    // are kept (copied once, out of the decoder's buffer) for the store.
    if (isBatchFrame(payload)) {
      const own = Buffer.from(payload);
      const parts = splitBatchFrame(own);
      if (parts !== null) {
        this.recordsSeen += parts.length;
        const out: AgentRecord[] = [];
        for (const bytes of parts) {
          const h = readRecordHeader(bytes);
          if (h !== null) {
            this.received(out, h, null, bytes);
            continue;
          }
          try {
            const raw = v1.Record.decode(bytes);
            this.received(out, headerOf(raw), raw, bytes);
          } catch (err) {
            this.emit(
              'protocolError',
              new VesperError(ErrorCode.MESSAGE_DECODE, `undecodable record: ${(err as Error).message}`, '', { cause: err }),
            );
          }
        }
        this.deliver(out);
        return;
      }
    }
    if (payload.length > MAX_CONTROL_FRAME && !isBatchFrame(payload)) {
      this.emit(
        'protocolError',
        new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `a ${payload.length}-byte message that is no record batch: not decoded`),
      );
      return;
    }
    let f: pb.Frame;
    try {
      // a copy: the payload is a view into a read buffer that is reused, and a decoded message's
      // bytes fields (a probe's digest) would be views into it too
      f = decodeMessage(Buffer.from(payload));
    } catch (err) {
      this.emit('protocolError', VesperError.from(err, ErrorCode.MESSAGE_DECODE));
      return;
    }
    switch (f.body) {
      case 'batch':
        {
          const out: AgentRecord[] = [];
          this.recordsSeen += f.batch!.records?.length ?? 0;
          for (const raw of (f.batch!.records ?? []) as pb.Record[]) this.received(out, headerOf(raw), raw, v1.Record.encode(raw).finish());
          this.deliver(out);
        }
        return;
      case 'hello': {
        const h = f.hello! as pb.Hello;
        if (h.protocolVersion !== PROTOCOL_VERSION) {
          this.emit(
            'protocolError',
            new VesperError(ErrorCode.PROTOCOL_VERSION, `agent speaks protocol ${h.protocolVersion}, host ${PROTOCOL_VERSION}`),
          );
          this.close();
          return;
        }
        const long = (['bootId', 'hostname', 'kernelRelease', 'agentVersion'] as const).find((k) => (h[k] ?? '').length > MAX_HELLO_STRING);
        if (long) {
          this.emit(
            'protocolError',
            new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `hello with a ${h[long].length}-character ${long}: link closed`),
          );
          this.close();
          return;
        }
        const now = Date.now();
        if (this.lastHelloAt > 0 && now - this.lastHelloAt < HELLO_MIN_INTERVAL_MS) {
          if (this.heldHello === null)
            this.emit(
              'protocolError',
              new VesperError(
                ErrorCode.PROTOCOL_UNEXPECTED,
                `hellos less than ${HELLO_MIN_INTERVAL_MS} ms apart: only the last is answered`,
              ),
            );
          this.heldHello = h;
          this.helloTimer ??= setTimeout(
            () => {
              this.helloTimer = null;
              const held = this.heldHello;
              this.heldHello = null;
              if (held && !this.closed) this.onHello(held);
            },
            this.lastHelloAt + HELLO_MIN_INTERVAL_MS - now,
          );
          return;
        }
        this.onHello(h);
        return;
      }
      case 'error':
        this.emit('protocolError', VesperError.fromWire(f.error));
        return;
      default: {
        const p = this.pending.get(f.reqId);
        if (!p && f.body === 'pong' && f.reqId === 0) return; // the answer to our first ping
        if (!p) {
          this.emit(
            'protocolError',
            new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `unsolicited ${f.body ?? 'empty'} message (request ${f.reqId})`),
          );
          return;
        }
        this.pending.delete(f.reqId);
        clearTimeout(p.timer);
        p.resolve(f);
      }
    }
  }

  /** A hello answered: resume point, the probes it says it runs, the ack, and 'hello' to listeners. */
  private onHello(h: pb.Hello): void {
    this.helloSeen = true;
    this.lastHelloAt = Date.now();
    this.hello = h;
    if (this.opts.resumeFor) this.lastSeq = this.opts.resumeFor(h);
    this.probes.clear();
    for (const l of h.loaded ?? []) this.remember(l);
    this.send({
      helloAck: {
        protocolVersion: PROTOCOL_VERSION,
        hostVersion: VESPER_VERSION,
        ackedSeq: this.lastSeq,
        maxFrameBytes: this.opts.maxFrameBytes,
      },
    });
    this.emit('hello', h);
  }

  /** One received record: dropped if already held, else typed and added to `out`. */
  private received(out: AgentRecord[], h: RecordHeader, raw: pb.Record | null, bytes: Uint8Array): void {
    const seq = h.seq;
    if (seq <= this.lastSeq) {
      this.duplicates++;
      return;
    }
    if (seq !== this.lastSeq + 1) {
      this.gaps++;
      this.emit('protocolError', new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `sequence gap: expected ${this.lastSeq + 1}, got ${seq}`));
    }
    this.lastSeq = seq;
    this.recordsReceived++;
    out.push(this.typed(h, raw, bytes));
  }

  /** The records of one frame, to listeners. */
  private deliver(out: AgentRecord[]): void {
    if (!out.length) return;
    if (this.listenerCount('record')) for (const r of out) this.emit('record', r);
    this.emit('batch', out);
    if (this.opts.autoAck) this.ack();
  }

  private typed(h: RecordHeader, raw: pb.Record | null, bytes: Uint8Array): AgentRecord {
    const kind = (h.kind ?? 'generic') as RecordKind;
    if (h.handle === 0)
      return new AgentRecord(h.seq, h.monoNs, h.wallNs, 0, 'agent', 0, kind === 'loss' ? 'loss' : 'probe_fault', kind, bytes, raw);
    const p = this.probes.get(h.handle);
    return new AgentRecord(
      h.seq,
      h.monoNs,
      h.wallNs,
      h.handle,
      p?.name ?? `handle-${h.handle}`,
      p?.instance ?? 0,
      p?.events.get(h.eventId) ?? `event-${h.eventId}`,
      kind,
      bytes,
      raw,
    );
  }
}

/** A decoded record's header (field by field: protobufjs keeps defaults on the prototype). */
function headerOf(raw: pb.Record): RecordHeader {
  return { seq: raw.seq, monoNs: raw.monoNs, wallNs: raw.wallNs, handle: raw.handle, eventId: raw.eventId, kind: raw.payload ?? null };
}

function kv(o: Record<string, string> | undefined): pb.IParamValue[] {
  return Object.entries(o ?? {}).map(([name, value]) => ({ name, value: String(value) }));
}
