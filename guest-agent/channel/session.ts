// One link between this agent and the host: handshake, requests, and the record stream.
//
// The agent speaks first (Hello: who it is, what the kernel offers, which probes are
// loaded, which sequence numbers it holds). The host answers with the highest sequence it
// already has; everything after that is sent again. From then on records flow as batches
// and the host acknowledges them cumulatively; acknowledged records leave the ring.
import type { Duplex } from 'node:stream';
import { encodeBatchFrame } from '../../proto/batch.js';
import { DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, decodeMessage, encodeMessage, type pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';
import { monoNow } from '../kernel/proc.js';
import type { Logger } from '../log.js';
import type { RecordRing } from '../ring/record-ring.js';
import type { ProbeRuntime } from '../modules/runtime.js';
import type { AckVerdict } from '../modules/host-trust.js';

const BATCH_MAX_RECORDS = 1024;
const HANDSHAKE_TIMEOUT_MS = 15_000;
const STALL_CHECK_MS = 1000;
const STALL_LIMIT_MS = 5000;
const ERROR_REPORTS_PER_S = 20;

export interface SessionDeps {
  ring: RecordRing;
  runtime: ProbeRuntime;
  log: Logger;
  hello: () => pb.IHello;
  /** called before every batch goes out */
  beforeSend?: () => void;
  maxFrameBytes: number;
  /** the host's answer checked against the key(s) this agent trusts (host-trust.ts); refused: the link closes */
  onHelloAck?: (ack: pb.IHelloAck, nonce: Uint8Array) => AckVerdict;
}

export class Session {
  private readonly decoder: FrameDecoder;
  private ready = false;
  private closed = false;
  private writable = true;
  private pumpScheduled = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private errorBudget = ERROR_REPORTS_PER_S;
  /** when the error budget was last refilled (performance.now()) */
  private budgetAt = 0;
  /** armed only while a frame is partly read: an idle link costs no timer */
  private stallTimer: NodeJS.Timeout | null = null;
  private maxBatchBytes: number;
  /** the nonce of the hello this link sent: the host's key proof signs it */
  private helloNonce: Uint8Array = new Uint8Array();
  framesIn = 0;
  protocolErrors = 0;

  constructor(
    readonly stream: Duplex,
    readonly describe: string,
    private readonly d: SessionDeps,
    private readonly onClose: (s: Session) => void,
  ) {
    this.maxBatchBytes = Math.floor(d.maxFrameBytes / 2);
    this.decoder = new FrameDecoder({
      maxFrameBytes: d.maxFrameBytes,
      onFrame: (p) => this.onFrame(p),
      onError: (e) => this.complain(e),
    });
    stream.on('data', (c: Buffer) => {
      this.decoder.push(c);
      if (this.decoder.pendingBytes > 0 && !this.stallTimer) this.watchPartial();
    });
    stream.on('drain', () => {
      this.writable = true;
      this.schedulePump();
    });
    stream.on('error', (err) => d.log.warn({ link: describe, err: err.message }, 'link error'));
    stream.on('close', () => this.close('closed by peer'));
    stream.on('end', () => this.close('ended by peer'));
    this.timers.push(
      setTimeout(() => {
        if (!this.ready) {
          this.complain(new VesperError(ErrorCode.HANDSHAKE_TIMEOUT, `no hello_ack within ${HANDSHAKE_TIMEOUT_MS} ms`));
          this.close('handshake timeout');
        }
      }, HANDSHAKE_TIMEOUT_MS),
    );
    for (const t of this.timers) t.unref();
    const hello = d.hello();
    this.helloNonce = hello.enrolNonce ?? new Uint8Array();
    this.send({ hello });
  }

  /** The ring has something new; send it soon (coalescing bursts into one batch). */
  schedulePump(): void {
    if (this.pumpScheduled || !this.ready || this.closed) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.ready && !this.closed && this.writable && this.d.ring.unsent > 0) this.d.beforeSend?.();
    while (this.ready && !this.closed && this.writable && this.d.ring.unsent > 0) {
      const recs = this.d.ring.takeUnsent(BATCH_MAX_RECORDS, this.maxBatchBytes);
      if (!recs.length) break;
      this.writable = this.stream.write(encodeBatchFrame(recs));
    }
  }

  /**
   * Writes out what the ring has unsent now and waits (at most timeoutMs) until the stream has
   * handed it on: the agent's last records before it exits. Nothing is written on a link the host
   * has not answered yet.
   */
  flush(timeoutMs: number): Promise<void> {
    this.pump();
    if (!this.ready || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      // written after everything before it: its callback says those are out too
      this.stream.write(Buffer.alloc(0), () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** A frame is partly read: drop it if the rest does not come within STALL_LIMIT_MS. */
  private watchPartial(): void {
    this.stallTimer = setTimeout(() => {
      this.stallTimer = null;
      if (this.closed) return;
      if (this.decoder.pendingForMs() > STALL_LIMIT_MS) this.decoder.discardPartial('stalled');
      else if (this.decoder.pendingBytes > 0) this.watchPartial();
    }, STALL_CHECK_MS);
    this.stallTimer.unref();
  }

  close(why: string): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.decoder.discardPartial('ended');
    this.d.log.info({ link: this.describe, why }, 'link closed');
    this.stream.destroy();
    this.onClose(this);
  }

  private send(f: pb.IFrame): void {
    if (this.closed) return;
    this.writable = this.stream.write(encodeFrame(encodeMessage(f)));
  }

  /** Tells the peer (rate-limited) and the log what was wrong with its bytes. */
  private complain(e: VesperError): void {
    this.protocolErrors++;
    const now = performance.now();
    if (now - this.budgetAt >= 1000) {
      this.errorBudget = ERROR_REPORTS_PER_S;
      this.budgetAt = now;
    }
    if (this.errorBudget-- <= 0) return;
    this.d.log.warn({ link: this.describe, code: e.code, err: e.message }, 'bad input from host');
    this.send({ error: e.toWire() });
  }

  private onFrame(payload: Buffer): void {
    this.framesIn++;
    let f: pb.Frame;
    try {
      f = decodeMessage(payload);
    } catch (err) {
      this.complain(VesperError.from(err, ErrorCode.MESSAGE_DECODE));
      return;
    }
    const req = f.reqId;
    switch (f.body) {
      case 'helloAck': {
        const a = f.helloAck!;
        if (a.protocolVersion !== PROTOCOL_VERSION) {
          this.complain(
            new VesperError(ErrorCode.PROTOCOL_VERSION, `host speaks protocol ${a.protocolVersion}; this agent speaks ${PROTOCOL_VERSION}`),
          );
          this.close('protocol version');
          return;
        }
        const trust = this.d.onHelloAck?.(a, this.helloNonce) ?? { ok: true };
        if (trust.ok === 'stale') {
          // The answer to a hello of an earlier link (written while no host held the port, read
          // by this host first): this link's own answer follows.
          this.d.log.info({ link: this.describe }, "answer to an earlier hello ignored: waiting for this link's");
          return;
        }
        if (!trust.ok) {
          // Told to the host (which shows it in `vesper status`) and logged by the trust itself;
          // nothing of this guest goes to a host it does not trust.
          this.send({ error: trust.error.toWire() });
          this.close(`host refused: ${trust.error.code}`);
          return;
        }
        if (a.maxFrameBytes) this.maxBatchBytes = Math.max(4096, Math.floor(Math.min(a.maxFrameBytes, this.d.maxFrameBytes) / 2));
        this.d.ring.ack(Number(a.ackedSeq ?? 0));
        this.d.ring.rewind();
        this.ready = true;
        this.d.log.info({ link: this.describe, ackedSeq: a.ackedSeq, resend: this.d.ring.unsent }, 'host connected');
        this.schedulePump();
        return;
      }
      case 'ack':
        this.d.ring.ack(Number(f.ack!.seq ?? 0));
        this.schedulePump(); // a loss record may have been queued as room came back
        return;
      case 'ping':
        this.send({ reqId: req, pong: { nonce: f.ping!.nonce, pingSentMonoNs: f.ping!.sentMonoNs, recvMonoNs: monoNow() } });
        return;
      case 'loadProbe':
        this.answer(
          req,
          this.d.runtime.load(f.loadProbe!),
          (loaded) => ({ loadResult: { ok: true, loaded } }),
          (error) => ({ loadResult: { ok: false, error } }),
        );
        return;
      case 'unloadProbe':
        this.answer(
          req,
          this.d.runtime.unload(f.unloadProbe!.handles ?? [], f.unloadProbe!.name ?? ''),
          (unloaded) => ({ unloadResult: { ok: true, unloaded } }),
          (error) => ({ unloadResult: { ok: false, error } }),
        );
        return;
      case 'setParams':
        this.answer(
          req,
          this.d.runtime.setParams(f.setParams!.handle ?? 0, f.setParams!.params ?? []),
          (probe) => ({ setParamsResult: { ok: true, probe } }),
          (error) => ({ setParamsResult: { ok: false, error } }),
        );
        return;
      case 'listProbes':
        this.send({ reqId: req, probeList: { loaded: this.d.runtime.list() } });
        return;
      case 'error':
        this.d.log.warn({ link: this.describe, code: f.error!.code, err: f.error!.message }, 'host reported an error');
        return;
      default:
        this.complain(new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `unexpected message ${f.body ?? '(empty)'} from host`));
    }
  }

  private answer<T>(req: number, p: Promise<T>, ok: (v: T) => pb.IFrame, bad: (e: pb.IError) => pb.IFrame): void {
    p.then(
      (v) => this.send({ reqId: req, ...ok(v) }),
      (err) => {
        const e = VesperError.from(err);
        this.d.log.warn({ code: e.code, err: e.message }, 'request failed');
        this.send({ reqId: req, ...bad(e.toWire()) });
      },
    );
  }
}

export { DEFAULT_MAX_FRAME_BYTES };
