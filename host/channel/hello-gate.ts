// The handshake of one link, the host's side: the agent's hello checked (protocol version,
// identity strings), hellos that come too close together coalesced (the last one answered),
// and `ready`, which settles with the first answered hello or fails, named by the first
// protocol problem seen before it when there was one (garbage, an oversized frame, another
// protocol version are not a silent agent).
import { PROTOCOL_VERSION, type pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

/**
 * A second hello on a link is an agent that restarted behind it, which takes far longer than
 * this; hellos closer together are coalesced (the last one answered when the time is up), so
 * that a flood of them costs one answer and one probe push a second, not one per hello.
 */
export const HELLO_MIN_INTERVAL_MS = 1000;
/**
 * The longest a hello's identity strings may be. A boot id is a 36-character UUID, a hostname
 * and a kernel release fit in 64: the boot id and pid name every stored record's agent run, so
 * a hello with a 100 KB boot id would make every row of that guest 100 KB.
 */
export const MAX_HELLO_STRING = 256;

export interface HelloGateHooks {
  /** answers a hello that passed (the client's onHello, which then calls answered()) */
  answer: (h: pb.Hello) => void;
  /** a protocol problem of the hello */
  problem: (e: VesperError) => void;
  /** closes the link (a hello that must not be answered) */
  close: () => void;
  isClosed: () => boolean;
}

export class HelloGate {
  /** settles once the first hello is answered; fails on timeout or when the link closes first */
  readonly ready: Promise<void>;
  private helloSeen = false;
  /** the first protocol problem before the agent's hello: what the failed handshake is named by */
  private preHelloProblem: VesperError | null = null;
  private lastHelloAt = 0;
  /** the agent run of the last hello answered: boot id, pid, start */
  private lastRun = '';
  private heldHello: pb.Hello | null = null;
  /** a hello of the same run came again at once (once per link: see hold) */
  private relinked = false;
  private heldTimer: NodeJS.Timeout | null = null;
  private readonly timeout: NodeJS.Timeout;
  private resolve!: () => void;
  private reject!: (e: VesperError) => void;

  constructor(
    timeoutMs: number,
    private readonly h: HelloGateHooks,
  ) {
    this.ready = new Promise<void>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    // Nobody may be waiting on the handshake (a caller that only listens for records):
    // its failure must not become an unhandled rejection.
    this.ready.catch(() => undefined);
    this.timeout = setTimeout(
      () => this.reject(this.named(new VesperError(ErrorCode.HANDSHAKE_TIMEOUT, `agent sent no hello within ${timeoutMs} ms`))),
      timeoutMs,
    );
  }

  /** A hello has been answered on this link. */
  get seen(): boolean {
    return this.helloSeen;
  }

  /**
   * A protocol problem of the link. The first before the hello names a handshake that then fails.
   * The link is not closed for it: a virtio-serial port may hold the end of what the guest wrote
   * before we connected, and the hello comes after it.
   */
  notice(e: VesperError): void {
    if (!this.helloSeen && this.preHelloProblem === null && e.code !== ErrorCode.INGEST_THROTTLED) this.preHelloProblem = e;
  }

  /** A hello from the agent: refused (the link closed), held back, or answered. */
  take(h: pb.Hello): void {
    if (h.protocolVersion !== PROTOCOL_VERSION) {
      this.h.problem(new VesperError(ErrorCode.PROTOCOL_VERSION, `agent speaks protocol ${h.protocolVersion}, host ${PROTOCOL_VERSION}`));
      this.h.close();
      return;
    }
    const long = (['bootId', 'hostname', 'kernelRelease', 'agentVersion'] as const).find((k) => (h[k] ?? '').length > MAX_HELLO_STRING);
    if (long) {
      this.h.problem(new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `hello with a ${h[long].length}-character ${long}: link closed`));
      this.h.close();
      return;
    }
    const now = Date.now();
    if (this.lastHelloAt > 0 && now - this.lastHelloAt < HELLO_MIN_INTERVAL_MS) {
      this.hold(h, now);
      return;
    }
    this.answer(h);
  }

  /** The hello was answered, but the link must not go on (the agent refuses our key): `ready` fails with e. */
  refused(e: VesperError): void {
    clearTimeout(this.timeout);
    if (this.heldTimer) clearTimeout(this.heldTimer);
    this.reject(e);
  }

  /** The link closed: a handshake still waiting fails with why; a held hello is not answered. */
  closed(why: string): void {
    clearTimeout(this.timeout);
    if (this.heldTimer) clearTimeout(this.heldTimer);
    this.reject(this.named(new VesperError(ErrorCode.DISCONNECTED, `link closed before the handshake: ${why}`)));
  }

  /** Too soon after the last: kept, and the last one kept is answered when the interval is up. */
  private hold(h: pb.Hello, now: number): void {
    // The same agent run saying hello again at once is the guest linking again: on a
    // virtio-serial port a hello written while no host held the port waits there and reaches
    // the next host just before the hello of the link that host made. Coalesced all the same,
    // but no protocol problem; a flood from other runs (or a second one from the same) is.
    const relink = this.heldHello === null && !this.relinked && runOf(h) === this.lastRun;
    if (relink) this.relinked = true;
    else if (this.heldHello === null)
      this.h.problem(
        new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `hellos less than ${HELLO_MIN_INTERVAL_MS} ms apart: only the last is answered`),
      );
    this.heldHello = h;
    this.heldTimer ??= setTimeout(
      () => {
        this.heldTimer = null;
        const held = this.heldHello;
        this.heldHello = null;
        if (held && !this.h.isClosed()) this.answer(held);
      },
      this.lastHelloAt + HELLO_MIN_INTERVAL_MS - now,
    );
  }

  private answer(h: pb.Hello): void {
    this.helloSeen = true;
    this.lastHelloAt = Date.now();
    this.lastRun = runOf(h);
    this.h.answer(h);
  }

  /** The hello is answered (the client calls this before its 'hello' listeners run): `ready` settles. */
  answered(): void {
    clearTimeout(this.timeout);
    this.resolve();
  }

  /** why the handshake failed: the problem seen before it, if any, else `fallback` */
  private named(fallback: VesperError): VesperError {
    const p = this.preHelloProblem;
    return p ? new VesperError(p.code, `before the handshake: ${p.message} (then: ${fallback.message})`, p.detail) : fallback;
  }
}

/** one agent run: the same boot, pid and start */
function runOf(h: pb.Hello): string {
  return `${h.bootId} ${h.agentPid} ${String(h.agentStartMonoNs)}`;
}
