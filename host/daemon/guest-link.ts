// What vesperd makes of one VM's agent: it owns the VM's GuestSession (host/channel/, the link
// itself) and wires it into the daemon: which probes are attached (remembered in the store, so
// a guest reboot and a vesperd restart both end with the same probes and parameters), records
// turned into events through group commit into the framework, acknowledgements once stored,
// and the `channel` host plugin's events (agent connected / lost, heartbeat lost / back).
// The link is a virtio-serial port's unix socket or an SSH target's exec channel (LinkSpec);
// everything above it is the same.
import type { Logger } from 'pino';
import type { AgentRecord } from '../../proto/record.js';
import { ProblemLog } from '../channel/problem-log.js';
import { GuestSession, unixOpener, type AttachedProbe, type LinkOpener } from '../channel/guest-session.js';
import type { IngestBudgetOptions } from '../channel/ingest-budget.js';
import type { ProbeWarning } from '../channel/agent-probes.js';
import type { HostKey } from '../keys.js';
import type { VesperEvent } from '../notify/event.js';
import { readProbeBundle, signModule } from '../probes/package.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { IngestBatcher } from './ingest.js';
import { RecordEvent, eventOfRecord } from '../notify/record-event.js';
import { MAX_HONEST_RECORD_BYTES, capOversizedRecord } from '../notify/guest-strings.js';
import { endedRunLosses } from './ended-runs.js';
import { ACK_AT_RECORDS, AckCoalescer } from './ack-coalescer.js';
import type { ReadPacer } from '../channel/read-pacer.js';
import type { LatencyHistogram } from '../metrics/latency.js';

export interface GuestLinkDeps {
  key: HostKey;
  batcher: IngestBatcher;
  /** what the store holds of an agent run: the agent resends after it */
  heldFor: (vm: string, agentRun: string) => number;
  /** host-side events (the channel plugin) go through the same framework */
  hostEvent: (ev: VesperEvent) => void;
  log: Logger;
  keepaliveMs?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** how fast one guest's link is read at most (channel.ingest in the config); unlimited when absent */
  budget?: IngestBudgetOptions;
  /** the daemon's ack coalescer, shared by its links (absent: one of the link's own) */
  acks?: AckCoalescer;
  /** the daemon's read pacer: a unix socket's reads count towards it (absent: not paced) */
  pacer?: ReadPacer;
  /** detection latency (guest kernel record → stored, host clock) by plugin, when metrics are on */
  latency?: LatencyHistogram;
}

/** how often a link measures its agent's clock again (guest clocks drift, under TCG more) */
export const CLOCK_EVERY_MS = 60_000;
/** the second measurement after a link comes up, and how old a tight one may get before any replaces it */
const CLOCK_SETTLE_MS = 3000;
const CLOCK_STALE_MS = 10 * 60_000;

/**
 * How much longer than the usual misses × interval the first heartbeat of an agent that said it
 * stopped may take once it links again: a rebooted guest's agent loads its probes first.
 */
export const AGENT_BACK_GRACE_MS = 30_000;

export type LinkState = 'connecting' | 'connected' | 'stopped';

/**
 * The longest link error kept (and shown by `vesper status`). Its message may carry what the
 * other end said (an SSH relay's stderr): a guest must not decide how much vesperd holds and
 * prints for it.
 */
export const MAX_LINK_ERROR = 1024;

function capped(e: VesperError): VesperError {
  if (e.message.length <= MAX_LINK_ERROR) return e;
  return new VesperError(e.code, `${e.message.slice(0, MAX_LINK_ERROR)}… (${e.message.length} characters)`);
}

/** How a VM's agent is reached. */
export interface LinkSpec {
  transport: 'virtio' | 'ssh';
  /** the channel's unix socket, or user@host[:port] */
  where: string;
  open: LinkOpener;
  /** what else to release when the link stops (the SSH connection) */
  close?: () => void;
  /** ssh: the live connection's host key, `SHA256:… (known_hosts)` */
  hostKey?: () => string;
}

/** A virtio-serial port's (or a host-mode agent's) unix socket. */
export function unixLink(socket: string, pacer?: ReadPacer): LinkSpec {
  return { transport: 'virtio', where: socket, open: unixOpener(socket, pacer) };
}

export class GuestLink {
  readonly session: GuestSession;
  state: LinkState = 'connecting';
  heartbeatLost = false;
  recordsReceived = 0;
  recordsLost = 0;
  /** records lost with ended agent runs (numbered by an agent that died before they were sent) */
  recordsLostEnded = 0;
  /** the agent's CLOCK_MONOTONIC minus ours (ns), while connected and measured; null otherwise */
  clockOffsetNs: number | null = null;
  /** the round trip (ms) the offset was measured with, and when (performance.now()) */
  private clockRttMs = Infinity;
  private clockAt = 0;
  private clockTimer: NodeJS.Timeout | null = null;
  /** why the last link attempt failed; null once a link works */
  linkError: VesperError | null = null;
  readonly spec: LinkSpec;
  private modules = new Map<string, ReturnType<typeof signModule>>();
  /** highest stored sequence number, the agent run it belongs to, and the highest acknowledged */
  private ackSeq = 0;
  private ackRun = '';
  private ackedSeq = 0;
  /**
   * Since when the host has stopped the guest's clock (host-pause.ts), ms; 0 when it runs. While
   * held, neither heartbeat-lost nor agent-lost is told: the silence is the pause's.
   */
  heldSince = 0;
  /** links that broke while held (told in watch-resumed instead of agent-lost) */
  droppedWhileHeld = 0;
  /**
   * The agent's last record said it was told to stop (channel agent-stopping), and what systemd's
   * state was then: the silence that follows is planned, so neither heartbeat-lost nor agent-lost
   * is told until an agent links again.
   */
  agentStopping: { signal: string; systemState: string } | null = null;
  /** an oversized guest string was capped and said so in the log (once per VM) */
  private toldCapped = false;
  private readonly acks: AckCoalescer;

  constructor(
    readonly vm: string,
    link: string | LinkSpec,
    private readonly d: GuestLinkDeps,
  ) {
    this.spec = typeof link === 'string' ? unixLink(link, d.pacer) : link;
    this.acks = d.acks ?? new AckCoalescer();
    this.session = new GuestSession({
      open: this.spec.open,
      module: (name) => this.module(name),
      autoAck: false,
      heldFor: (run) => d.heldFor(vm, run),
      keepaliveMs: d.keepaliveMs ?? 1000,
      minBackoffMs: d.minBackoffMs ?? 200,
      maxBackoffMs: d.maxBackoffMs ?? 10_000,
      hostKey: d.key,
      ...(d.budget ? { budget: d.budget } : {}),
    });
    const s = this.session;
    s.on('batch', (rs, run) => this.onBatch(rs, run));
    s.on('linkFailed', (failed) => {
      const e = capped(failed);
      // Told once per change, not at every retry: a refused host key stays refused until the
      // operator acts, and a log line every backoff step would bury everything else.
      const same = this.linkError?.code === e.code && this.linkError.message === e.message;
      this.linkError = e;
      if (!same)
        d.log.warn({ vm, via: this.spec.transport, where: this.spec.where, code: e.code, err: e.message }, 'cannot link to the agent');
    });
    s.on('connected', (i) => {
      this.state = 'connected';
      if (this.agentStopping) {
        this.agentStopping = null;
        if (!this.heldSince) this.session.releaseHeartbeat(AGENT_BACK_GRACE_MS);
      }
      if (this.linkError) d.log.info({ vm, code: this.linkError.code }, 'the agent link works again');
      this.linkError = null;
      this.channelEvent('agent-connected', {
        agentRestarted: i.agentRestarted,
        repushed: i.repushed,
        bootId: i.hello.bootId,
        agentPid: i.hello.agentPid,
        agentVersion: i.hello.agentVersion,
        kernel: i.hello.kernelRelease,
        endedRuns: (i.hello.endedRuns ?? []).map((r) => ({ bootId: r.bootId, agentPid: r.agentPid, lastSeq: Number(r.lastSeq ?? 0) })),
      });
      d.log.info({ vm, repushed: i.repushed, agentRestarted: i.agentRestarted }, 'agent connected');
      // What earlier agent runs of this boot numbered and the store does not hold died with them.
      this.clockOffsetNs = null;
      this.clockRttMs = Infinity;
      if (d.latency) {
        this.measureClock();
        // again once the agent has settled (its first seconds push probes: slow round trips)
        setTimeout(() => this.measureClock(), CLOCK_SETTLE_MS).unref();
      }
      const lost = endedRunLosses(vm, i.hello, (run) => d.heldFor(vm, run));
      if (lost.length) {
        for (const e of lost) this.recordsLostEnded += Number((e.payload['loss'] as { count?: number } | undefined)?.count ?? 0);
        for (const e of lost)
          d.log.warn({ vm, ...(e.payload['loss'] as object), agentRun: e.source?.agentRun }, 'records lost with an ended agent run');
        d.batcher.push(lost, (err) => {
          if (err) d.log.error({ vm, err: err.message }, 'loss report not stored');
        });
      }
    });
    s.on('disconnected', (why) => {
      if (this.state === 'stopped') return;
      this.state = 'connecting';
      this.clockOffsetNs = null;
      if (this.heldSince) {
        // The host paused, saved or is migrating the domain: its QEMU may close the port.
        this.droppedWhileHeld++;
        d.log.info({ vm, why }, 'agent link closed while the host holds the guest stopped: not an agent loss');
        return;
      }
      if (this.agentStopping) {
        d.log.info({ vm, why, ...this.agentStopping }, 'agent link closed after the agent said it stops: planned, not an agent loss');
        return;
      }
      // Channel silence alone says "agent lost", never "guest dead" (libvirt and the
      // heartbeat decide that).
      this.channelEvent('agent-lost', { why });
      d.log.info({ vm, why }, 'agent link lost');
    });
    s.on('heartbeat-lost', (i) => {
      this.heartbeatLost = true;
      this.channelEvent('heartbeat-lost', i);
    });
    s.on('heartbeat-back', (i) => {
      this.heartbeatLost = false;
      this.channelEvent('heartbeat-back', i);
    });
    // each kind of problem logged once, repeats summed up: a guest does not decide how much we log
    const problems = new ProblemLog(d.log, vm);
    s.on('protocolError', (e) => problems.tell(e));
  }

  start(): void {
    this.session.start();
    if (this.d.latency) {
      this.clockTimer = setInterval(() => this.measureClock(), CLOCK_EVERY_MS);
      this.clockTimer.unref();
    }
  }

  /** The host stopped the guest's clock (paused, saved, snapshotted, migrating): detection held. */
  hold(sinceMs = Date.now()): void {
    if (!this.heldSince) this.heldSince = sinceMs;
    this.session.holdHeartbeat();
  }

  /** The guest runs again: detection resumes, the first beat given graceMs more. Answers the links dropped meanwhile. */
  release(graceMs: number): number {
    const dropped = this.droppedWhileHeld;
    this.heldSince = 0;
    this.droppedWhileHeld = 0;
    if (!this.agentStopping) this.session.releaseHeartbeat(graceMs); // else at the next link
    return dropped;
  }

  stop(): void {
    this.state = 'stopped';
    if (this.clockTimer) clearInterval(this.clockTimer);
    this.acks.drop(this);
    this.session.stop();
    this.spec.close?.();
  }

  get attached(): Map<string, AttachedProbe> {
    return this.session.attached;
  }

  /** Loaded in the running agent right now (by name). */
  loadedNow(): Set<string> {
    const c = this.session.client;
    return new Set(c && !c.isClosed ? [...c.probes.values()].map((p) => p.name) : []);
  }

  /** Attaches (or re-attaches with new parameters) a probe; pushed now if the agent is there. */
  /** What the running agent's kernel lacks that the probe `name` runs without (its instances' warnings, once each). */
  warningsOf(name: string): ProbeWarning[] {
    const c = this.session.client;
    if (!c || c.isClosed) return [];
    const out: ProbeWarning[] = [];
    for (const p of c.probes.values())
      if (p.name === name) for (const w of p.warnings) if (!out.some((o) => o.message === w.message)) out.push(w);
    return out;
  }

  async attach(p: AttachedProbe): Promise<void> {
    // Loaded already (attached before, or left in the agent by an earlier vesperd): replaced,
    // so the parameters asked for now are the ones that run.
    if (this.loadedNow().has(p.name)) {
      this.session.attached.set(p.name, p);
      await this.session.detach(p.name);
    }
    await this.session.attach(p);
  }

  async detach(name: string): Promise<void> {
    if (!this.session.attached.has(name)) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${name} is not attached to ${this.vm}`);
    await this.session.detach(name);
  }

  /** Changes parameters of a loaded probe in place (every instance, or one). */
  async setParams(name: string, instance: number | null, params: Record<string, string>): Promise<void> {
    const c = this.session.client;
    if (!c || c.isClosed) return; // remembered by the caller; pushed with the probe at the next link
    const handles = [...c.probes.values()].filter((p) => p.name === name && (instance === null || p.instance === instance));
    for (const h of handles) await c.setParams(h.handle, params);
  }

  /** The agent's clock against ours: the best of a few pings (agent-client.ts clockOffset). */
  private measureClock(): void {
    const c = this.session.client;
    if (!c || c.isClosed) return;
    c.clockOffset(5).then(
      ({ offsetNs, rttMs }) => {
        if (this.session.client !== c || c.isClosed) return;
        // The error is at most half the round trip: a slower measurement does not replace a
        // tighter one unless that one is old (guest clocks drift).
        const now = performance.now();
        if (this.clockOffsetNs !== null && rttMs > 2 * this.clockRttMs + 1 && now - this.clockAt < CLOCK_STALE_MS) return;
        this.clockOffsetNs = offsetNs;
        this.clockRttMs = rttMs;
        this.clockAt = now;
        this.d.log.debug({ vm: this.vm, offsetNs, rttMs }, 'agent clock measured');
      },
      () => undefined, // the link went: measured again at the next connection
    );
  }

  /** Each newly stored record's latency from its kernel time to now, on our monotonic clock. */
  private observeLatency(rs: AgentRecord[], events: VesperEvent[], h: LatencyHistogram, offsetNs: number): void {
    const now = Number(process.hrtime.bigint());
    for (let i = 0; i < rs.length; i++) {
      const e = events[i]!;
      if (e.id === undefined) continue; // held already (a resent record): its latency was counted
      const s = (now - (rs[i]!.monoNs - offsetNs)) / 1e9;
      h.observe(e.plugin, s > 0 ? s : 0);
    }
  }

  /**
   * Which host key the agent said it trusts at its last hello, against this host's (docs/trust.md);
   * '' before any hello. A refused link says why in linkError (VSP_HOST_KEY_MISMATCH).
   */
  agentTrust(): string {
    const h = this.session.client?.hello;
    const mine = this.d.key.id;
    if (this.linkError?.code === ErrorCode.HOST_KEY_MISMATCH) return `another host's key: this host (${mine}) is refused`;
    if (!h) return '';
    const ids = h.trustedKeyIds ?? [];
    if (h.enrols) return `this host's key ${mine}, enrolled at this link (pinned on first contact)`;
    if (ids.includes(mine)) return `this host's key ${mine}`;
    if (!ids.length) return `not said (an agent older than enrolment)`;
    return `${ids.join(', ')}, not this host's key ${mine}`;
  }

  private module(name: string): ReturnType<typeof signModule> {
    let m = this.modules.get(name);
    if (!m) {
      m = signModule(readProbeBundle(name), this.d.key);
      this.modules.set(name, m);
    }
    return m;
  }

  private onBatch(rs: AgentRecord[], run: string): void {
    const now = Date.now() * 1000;
    const events = new Array<VesperEvent>(rs.length);
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i]!;
      if (r.kind === 'loss') this.recordsLost += Number(r.raw.loss?.count ?? 0);
      else if (r.kind === 'agentStopping') this.onAgentStopping(r);
      // larger than an honest record can be: its strings capped before it is stored (one comparison otherwise)
      events[i] = r.bytes.length > MAX_HONEST_RECORD_BYTES ? this.cappedEvent(r, run, now) : eventOfRecord(this.vm, run, r, now);
    }
    this.recordsReceived += rs.length;
    const last = rs[rs.length - 1]!.seq;
    this.d.batcher.push(events, (err) => {
      // Not stored: no ack, and a new link, so that the agent sends them again from what the
      // store holds (on this link the client already counts them as received).
      if (err) {
        this.d.log.error({ vm: this.vm, err: err.message }, 'records not stored; not acknowledged, relinking');
        this.session.client?.close();
        return;
      }
      const h = this.d.latency;
      if (h !== undefined && this.clockOffsetNs !== null) this.observeLatency(rs, events, h, this.clockOffsetNs);
      this.ackSoon(run, last);
    });
  }

  /** The agent says it was told to stop: no heartbeat-lost and no agent-lost until one links again. */
  private onAgentStopping(r: AgentRecord): void {
    const a = r.raw.agentStopping;
    this.agentStopping = { signal: a?.signal ?? '', systemState: a?.systemState ?? '' };
    this.session.holdHeartbeat();
    this.d.log.info(
      { vm: this.vm, ...this.agentStopping },
      this.agentStopping.systemState === 'stopping' ? 'the agent stops: the guest is shutting down' : 'the agent stops',
    );
  }

  /** An oversized record's event, its strings capped (guest-strings.ts); said once per VM in the log. */
  private cappedEvent(r: AgentRecord, run: string, now: number): VesperEvent {
    const c = capOversizedRecord(r.bytes);
    if (c === null) return eventOfRecord(this.vm, run, r, now);
    if (!this.toldCapped) {
      this.toldCapped = true;
      this.d.log.warn(
        { vm: this.vm, code: ErrorCode.PROTOCOL_UNEXPECTED, probe: r.probe, event: r.event, bytes: r.bytes.length, cut: c.cut },
        'guest record with strings longer than the kernel allows (comm 15 bytes, paths PATH_MAX...): capped before storing; said once for this VM',
      );
    }
    const e = eventOfRecord(this.vm, run, r, now);
    return new RecordEvent(e.vm, e.plugin, e.instance, e.event, e.guestTimeUs, e.hostTimeUs, e.source, c.bytes, c.decoded);
  }

  private ackSoon(run: string, seq: number): void {
    // Sequence numbers belong to one agent run; a new run (guest reboot, agent restart) starts
    // at 1 again, and an older run's number must never reach it.
    if (run !== this.ackRun) [this.ackRun, this.ackSeq, this.ackedSeq] = [run, 0, 0];
    this.ackSeq = Math.max(this.ackSeq, seq);
    if (this.ackSeq - this.ackedSeq >= ACK_AT_RECORDS) {
      this.acks.drop(this);
      this.sendAck();
      return;
    }
    this.acks.soon(this);
  }

  /** Acknowledges what is stored of the current agent run (ackSoon decides when). */
  sendAck(): void {
    if (this.state === 'stopped' || this.session.agentRun !== this.ackRun || this.ackSeq <= this.ackedSeq) return;
    this.session.ack(this.ackSeq);
    this.ackedSeq = this.ackSeq;
  }

  private channelEvent(event: string, payload: object): void {
    this.d.hostEvent({
      vm: this.vm,
      plugin: 'channel',
      instance: 0,
      event,
      guestTimeUs: null,
      hostTimeUs: Date.now() * 1000,
      source: null,
      payload: { ...payload },
    });
  }
}
