// The channel's side of one guest, and nothing above it: it keeps a link to the agent up
// (reconnecting with backoff), re-pushes the probes it was told to keep attached when the guest
// rebooted or its agent restarted, drops records a second link repeats, and says when the
// heartbeat stops. It knows no VM table, store, filter or event: it hands records and link
// changes to whoever owns it (in vesperd, host/daemon/guest-link.ts).
// How a link is made is the caller's (a LinkOpener): a unix socket (a virtio-serial port's
// host end, or a host-mode agent), or an SSH exec channel (host/ssh/ssh-dialer.ts); the
// session logic is the same for every transport.
import { EventEmitter } from 'node:events';
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { AgentClient, type AgentClientOptions, type OfferedKey, type ProbeInfo } from './agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import type { IngestBudgetOptions } from './ingest-budget.js';
import type { ReadPacer } from './read-pacer.js';

/**
 * Makes one link to the agent and completes its handshake with these options (resumeFor,
 * keepalive, acks are the session's). Rejects when there is no link now; the session retries
 * with backoff.
 */
export type LinkOpener = (o: AgentClientOptions) => Promise<AgentClient>;

/** Links over a unix socket, through connectUnix's shared-buffer read path; its reads count towards `pacer`. */
export function unixOpener(socket: string, pacer?: ReadPacer): LinkOpener {
  return pacer ? (o) => AgentClient.connectUnix(socket, { ...o, pacer }) : (o) => AgentClient.connectUnix(socket, o);
}

export interface AttachedProbe {
  name: string;
  instances?: number;
  params?: Record<string, string>;
  instanceParams?: Record<number, Record<string, string>>;
}

export interface GuestSessionOptions {
  /** how to make a link; or `socket` */
  open?: LinkOpener;
  /** unix socket of the channel (QEMU's end of the virtio-serial port, or a host-mode agent) */
  socket?: string;
  /** a signed module for a probe name */
  module: (name: string) => pb.IProbeModule;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * A link must stay up this long (ms, default STABLE_LINK_MS) before the backoff goes back to
   * minBackoffMs. A handshake alone does not reset it: a guest that says hello and hangs up
   * would otherwise be relinked every minBackoffMs for ever.
   */
  stableLinkMs?: number;
  /** each link's ingest budget (see AgentClientOptions.budget); unlimited when absent */
  budget?: IngestBudgetOptions;
  /** heartbeat lost after this many missed intervals (default 3) */
  heartbeatMisses?: number;
  /** how often to ping the agent (ms); see AgentClientOptions.keepaliveMs */
  keepaliveMs?: number;
  /** how long a link's handshake may take (ms, default 10,000) */
  handshakeTimeoutMs?: number;
  /**
   * Acknowledge records as soon as they are emitted (default). A manager that stores them
   * turns this off and calls ack() once they are safe, so a crash loses nothing.
   */
  autoAck?: boolean;
  /**
   * What the host already holds of an agent run (`bootId/agentPid`), asked at every link, so
   * that a restarted manager resumes from its store; without it, this session's memory.
   */
  heldFor?: (agentRun: string) => number;
  /** the host key offered to the agent at every hello (AgentClientOptions.hostKey) */
  hostKey?: OfferedKey;
}

/** Passes one burst of hellos may take to agree with the agent (each asks it what it runs). */
const MAX_RECONCILE_PASSES = 4;

/** How long a link must stay up before the reconnect backoff starts again from its minimum. */
export const STABLE_LINK_MS = 10_000;

export interface ConnectedInfo {
  hello: pb.Hello;
  /** the guest booted again, or its agent restarted, since the last link */
  agentRestarted: boolean;
  repushed: string[];
}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface GuestSession {
  on(ev: 'record', fn: (r: AgentRecord) => void): this;
  /** every record batch as it arrived, after the 'record' events for it */
  on(ev: 'batch', fn: (rs: AgentRecord[], agentRun: string) => void): this;
  on(ev: 'connected', fn: (i: ConnectedInfo) => void): this;
  on(ev: 'disconnected', fn: (why: string) => void): this;
  on(ev: 'heartbeat-lost', fn: (i: { silentMs: number; intervalMs: number }) => void): this;
  on(ev: 'heartbeat-back', fn: (i: { silentMs: number }) => void): this;
  /** problems on the link (bad frames, resets): told, never thrown */
  on(ev: 'protocolError', fn: (e: VesperError) => void): this;
  /** a link attempt failed (told every time; the caller decides what is worth logging) */
  on(ev: 'linkFailed', fn: (e: VesperError) => void): this;
}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class GuestSession extends EventEmitter {
  readonly attached = new Map<string, AttachedProbe>();
  client: AgentClient | null = null;
  private agentId = ''; // boot id + agent pid of the agent we last spoke to
  private lastSeq = 0;
  private stopped = false;
  private backoff: number;
  private retry: NodeJS.Timeout | null = null;
  private stableTimer: NodeJS.Timeout | null = null;
  private hbTimer: NodeJS.Timeout | null = null;
  private lastBeat = 0;
  private hbLost = false;
  /** the host stopped the guest's clock (holdHeartbeat): no heartbeat-lost until releaseHeartbeat */
  private hbHeld = false;
  /** extra ms the first beat after releaseHeartbeat may take */
  private hbGraceMs = 0;
  private readonly open: LinkOpener;
  /** the pass that brings the agent's probes in line, per link (see onHello) */
  private reconciling: { client: AgentClient; done: Promise<void> } | null = null;
  private reconcileAgain = false;
  private helloRestarted = false;
  private readonly defaults = new Map<string, Record<string, string>>();

  constructor(private readonly o: GuestSessionOptions) {
    super();
    this.backoff = o.minBackoffMs ?? 200;
    if (o.open) this.open = o.open;
    else if (o.socket !== undefined) this.open = unixOpener(o.socket);
    else throw new VesperError(ErrorCode.USAGE, 'a guest session needs a link: open or socket');
  }

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  /** Resolves with the next successful link (or at once if there is one). */
  waitConnected(timeoutMs: number): Promise<AgentClient> {
    if (this.client && !this.client.isClosed) return Promise.resolve(this.client);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no link to the agent within ${timeoutMs} ms`)), timeoutMs);
      this.once('connected', () => {
        clearTimeout(t);
        resolve(this.client!);
      });
    });
  }

  async attach(p: AttachedProbe): Promise<void> {
    this.attached.set(p.name, p);
    if (this.client && !this.client.isClosed)
      try {
        await this.push(this.client, p);
      } catch (err) {
        // The agent refused it (a kprobe on a function this kernel has not, a bad parameter):
        // not kept, so that it is not pushed again at every link. A link that broke meanwhile
        // keeps it, to be pushed when the agent is back.
        const code = VesperError.from(err).code;
        if (code !== ErrorCode.DISCONNECTED && code !== ErrorCode.REQUEST_TIMEOUT) this.attached.delete(p.name);
        throw err;
      }
    this.armHeartbeat();
  }

  async detach(name: string): Promise<void> {
    this.attached.delete(name);
    if (this.client && !this.client.isClosed) await this.client.unload(name);
  }

  /** The agent run (`bootId/agentPid`) of the current or last link; '' before the first. */
  get agentRun(): string {
    return this.agentId;
  }

  /** Acknowledges records up to seq on the current link (with autoAck off). */
  ack(seq: number): void {
    if (this.client && !this.client.isClosed) this.client.ack(seq);
  }

  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    if (this.stableTimer) clearTimeout(this.stableTimer);
    if (this.hbTimer) clearTimeout(this.hbTimer);
    this.client?.close();
    this.client = null;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let c: AgentClient;
    try {
      c = await this.open({
        handshakeTimeoutMs: this.o.handshakeTimeoutMs ?? 10_000,
        keepaliveMs: this.o.keepaliveMs ?? 1000,
        // Same agent as before: it resends after what we hold. A new one starts at 1.
        resumeFor: (h) => {
          const run = this.idOf(h);
          if (this.o.heldFor) return this.o.heldFor(run);
          return run === this.agentId ? this.lastSeq : 0;
        },
        autoAck: this.o.autoAck ?? true,
        ...(this.o.budget ? { budget: this.o.budget } : {}),
        ...(this.o.hostKey ? { hostKey: this.o.hostKey } : {}),
        // from the first byte: a problem during the handshake is named, not lost
        onProtocolError: (e) => this.emit('protocolError', e),
      });
    } catch (err) {
      if (this.stopped) return;
      this.emit('linkFailed', VesperError.from(err, ErrorCode.DISCONNECTED));
      this.retryLater();
      return;
    }
    if (this.stopped) return c.close();
    // The backoff starts again from its minimum only once this link has stayed up a while: a
    // guest that completes its handshake and hangs up at once is retried later and later, as
    // if the link had failed.
    if (this.stableTimer) clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => {
      this.stableTimer = null;
      if (this.client === c && !c.isClosed) this.backoff = this.o.minBackoffMs ?? 200;
    }, this.o.stableLinkMs ?? STABLE_LINK_MS);
    this.stableTimer.unref();
    this.client = c;
    // Per batch, not per record: with a thousand busy guests, two emits per record were a
    // measurable part of the manager's CPU.
    c.on('batch', (rs: AgentRecord[]) => {
      this.lastSeq = rs[rs.length - 1]!.seq;
      for (let i = 0; i < rs.length; i++) if (rs[i]!.kind === 'heartbeat') this.beat();
      if (this.listenerCount('record') > 0) for (const r of rs) this.emit('record', r);
      this.emit('batch', rs, this.agentId);
    });
    c.once('close', (why) => {
      if (this.client === c) this.client = null;
      if (this.stableTimer) clearTimeout(this.stableTimer);
      this.stableTimer = null;
      this.emit('disconnected', why);
      if (!this.stopped) this.retryLater();
    });
    // A later hello on the same link: the guest rebooted or its agent restarted behind a
    // host connection that never dropped.
    c.on('hello', (h: pb.Hello) => void this.onHello(c, h));
    await this.onHello(c, c.hello);
  }

  /** The next link attempt after the current backoff, which then doubles (up to maxBackoffMs). */
  private retryLater(): void {
    this.retry = setTimeout(() => void this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, this.o.maxBackoffMs ?? 5000);
  }

  /**
   * A hello: the probes the host wants are brought in line with what the agent runs. One pass at
   * a time per link: a hello that arrives while a pass pushes (a guest that restarted says hello
   * twice, the second sent before our push reached it) does not start a second push, it makes
   * the running pass look again, at what the agent says it runs now (a fresh list, not the stale
   * hello). 'connected' is told once the views agree.
   */
  private onHello(c: AgentClient, h: pb.Hello): Promise<void> {
    const restarted = this.idOf(h) !== this.agentId;
    this.agentId = this.idOf(h);
    if (restarted) this.lastSeq = 0;
    this.helloRestarted ||= restarted;
    if (this.reconciling?.client === c) {
      this.reconcileAgain = true;
      return this.reconciling.done;
    }
    const done = this.reconcileLoop(c).finally(() => {
      if (this.reconciling?.done === done) this.reconciling = null;
    });
    this.reconciling = { client: c, done };
    return done;
  }

  private async reconcileLoop(c: AgentClient): Promise<void> {
    const repushed = new Set<string>();
    // the first pass takes the hello's list (the client holds it); later ones ask the agent
    for (let pass = 0; pass < MAX_RECONCILE_PASSES && !c.isClosed; pass++) {
      this.reconcileAgain = false;
      if (pass > 0)
        try {
          await c.list();
        } catch (err) {
          this.emit('protocolError', VesperError.from(err));
          break;
        }
      for (const name of await this.reconcile(c)) repushed.add(name);
      if (!this.reconcileAgain) break;
    }
    if (c.isClosed || this.client !== c) return;
    const restarted = this.helloRestarted;
    this.helloRestarted = false;
    this.emit('connected', { hello: c.hello, agentRestarted: restarted, repushed: [...repushed] });
    this.armHeartbeat();
  }

  /**
   * One pass: each attached probe that the agent runs as the same module with the same
   * parameters and instances is adopted; one it runs otherwise is replaced; one it does not run
   * is pushed. An agent that says it runs it already (its view moved since its hello) makes the
   * caller look again.
   */
  private async reconcile(c: AgentClient): Promise<string[]> {
    const pushed: string[] = [];
    for (const p of [...this.attached.values()]) {
      if (c.isClosed) break;
      const have = [...c.probes.values()].filter((x) => x.name === p.name);
      if (have.length > 0 && this.runsAsWanted(p, have)) continue;
      try {
        if (have.length > 0) await c.unload(p.name);
        await this.push(c, p);
        pushed.push(p.name);
      } catch (err) {
        const e = VesperError.from(err);
        if (e.code === ErrorCode.PROBE_ALREADY_LOADED) this.reconcileAgain = true;
        else this.emit('protocolError', e);
      }
    }
    return pushed;
  }

  /** The agent runs `have` as `p` asks: the same module (digest), instances and parameters (defaults filled in). */
  private runsAsWanted(p: AttachedProbe, have: ProbeInfo[]): boolean {
    let mod: pb.IProbeModule;
    try {
      mod = this.o.module(p.name);
    } catch {
      return true; // a probe the host cannot push any more: what runs stays
    }
    if (!mod.digest) return false;
    const digest = Buffer.from(mod.digest).toString('hex');
    if (have.length !== (p.instances ?? 1)) return false;
    const defaults = this.defaultsOf(p.name, mod);
    return have.every((h) => {
      if (h.digest !== digest) return false;
      const want = { ...defaults, ...(p.params ?? {}), ...(p.instanceParams?.[h.instance] ?? {}) };
      return Object.entries(want).every(([k, v]) => h.params[k] === String(v));
    });
  }

  private defaultsOf(name: string, mod: pb.IProbeModule): Record<string, string> {
    let d = this.defaults.get(name);
    if (!d) {
      d = {};
      try {
        const m = JSON.parse(Buffer.from(mod.manifest ?? new Uint8Array()).toString('utf8')) as {
          params?: Array<{ name: string; default: string }>;
        };
        for (const x of m.params ?? []) d[x.name] = String(x.default);
      } catch {
        /* no manifest to read: the given parameters alone are compared */
      }
      this.defaults.set(name, d);
    }
    return d;
  }

  private idOf(h: pb.Hello): string {
    return `${h.bootId}/${h.agentPid}`;
  }

  private push(c: AgentClient, p: AttachedProbe): Promise<unknown> {
    return c.load(this.o.module(p.name), { instances: p.instances, params: p.params, instanceParams: p.instanceParams });
  }

  /**
   * The host stopped the guest's clock (paused, saved, snapshotted, migrating): silence says
   * nothing now, so heartbeat-lost is not raised until releaseHeartbeat. A loss already told
   * stays told (heartbeat-back follows the next beat).
   */
  holdHeartbeat(): void {
    this.hbHeld = true;
    if (this.hbTimer) clearTimeout(this.hbTimer);
    this.hbTimer = null;
  }

  /**
   * The guest runs again: silence counts from now, and the first beat may take graceMs more
   * than the usual misses × interval (a resumed guest's timers, a restored guest's new link).
   */
  releaseHeartbeat(graceMs: number): void {
    if (!this.hbHeld) return;
    this.hbHeld = false;
    this.hbGraceMs = Math.max(0, graceMs);
    if (!this.hbLost) this.lastBeat = Date.now();
    this.armHeartbeat();
  }

  get heartbeatHeld(): boolean {
    return this.hbHeld;
  }

  private heartbeatInterval(): number {
    const hb = this.attached.get('heartbeat');
    if (!hb) return 0;
    const v = hb.params?.['interval_ms'] ?? '1000';
    const m = /^(\d+(?:\.\d+)?)\s*(ms|s)?$/.exec(v);
    return m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : 1000;
  }

  private beat(): void {
    const now = Date.now();
    if (this.hbLost) {
      this.hbLost = false;
      this.emit('heartbeat-back', { silentMs: now - this.lastBeat });
    }
    this.lastBeat = now;
    this.hbGraceMs = 0;
    this.armHeartbeat();
  }

  /** Heartbeat loss: the agent (or the whole guest userspace) stopped beating. */
  private armHeartbeat(): void {
    if (this.hbTimer) clearTimeout(this.hbTimer);
    const interval = this.heartbeatInterval();
    if (!interval || this.stopped || this.hbHeld) return;
    if (!this.lastBeat) this.lastBeat = Date.now();
    const limit = interval * (this.o.heartbeatMisses ?? 3) + this.hbGraceMs;
    this.hbTimer = setTimeout(
      () => {
        if (this.hbLost) return;
        this.hbLost = true;
        this.emit('heartbeat-lost', { silentMs: Date.now() - this.lastBeat, intervalMs: interval });
      },
      Math.max(0, this.lastBeat + limit - Date.now()),
    );
  }
}
