// vesperd's local API: a unix socket that only root and the `vesper` group may open (the
// kernel checks the socket file's mode and group at connect, so a refused user never reaches
// us), ApiFrame requests in, replies out. Followers of the event stream get events as they
// come, at the pace their socket takes them: a slow reader holds only its own cursor.
//
// The same server, with `only`, is the Pacemaker alert socket: its group is Pacemaker's
// (haclient, whose user hacluster runs alert agents) and it takes HostEvent requests and
// nothing else, so the cluster's user can report alerts without the vesper group's power to
// set filters that run programs as root.
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { ApiLink, errorReply, type apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from '../notify/event.js';
import type { EventQuery } from '../store/event-query.js';

/** A follower's feed: `pull` returns what is new, `onReadable` says when to pull. */
export interface EventFeed {
  pull(max: number): { events: VesperEvent[]; missed: number };
  onReadable(cb: () => void): void;
  close(): void;
}

/** What the API asks of the daemon (api-service.ts answers it). */
export interface DaemonApi {
  listVms(): Promise<apipb.IVmSummary[]>;
  vmStatus(vm: string): Promise<apipb.IVmDetail>;
  probeCatalogue(): apipb.IProbeInfo[];
  attach(vm: string, probes: string[], params: Record<string, string>, instances: number): Promise<apipb.IAttachedProbe[]>;
  /** resolves with the probes that were not attached (nothing to do for those) */
  detach(vm: string, probes: string[]): Promise<string[] | void>;
  paramGet(vm: string, plugin: string): Record<string, string>;
  paramSet(vm: string, plugin: string, instance: number | null, params: Record<string, string>): Promise<void>;
  filterList(): apipb.IFilterRule[];
  filterSet(rule: apipb.IFilterRule): void;
  filterClear(all: boolean, rule: apipb.IFilterRule | null): number;
  queryEvents(q: EventQuery): VesperEvent[];
  /** A feed of events published from now on that match q. */
  follow(q: EventQuery): EventFeed;
  /** A host plugin's event from outside (Pacemaker's alerts); resolves once stored, with what became of it. */
  submitHostEvent(e: apipb.IHostEvent): Promise<string>;
  /** The failure analysis of one VM (host/analysis), as JSON text that fits one reply. */
  analyze(req: apipb.IAnalyze): Promise<string>;
  /** The export sinks' state. */
  sinkStates(): apipb.ISinkState[];
  /** An online copy of the store at an absolute path that does not exist yet; resolves with what was done. */
  storeBackup(path: string): Promise<string>;
}

export interface ApiServerOptions {
  socket: string;
  /** the group that may connect (mode 0660); without such a group, root only (0600) */
  group: string;
  log: Logger;
  /** the only requests this socket takes (Request body names, e.g. 'hostEvent'); default all */
  only?: readonly string[];
  /** the mode of the socket's directory when this server creates it (default 0755, less the umask) */
  dirMode?: number;
}

/** A follower's socket buffer above this: stop pulling until it drains. */
const FOLLOW_BACKLOG_BYTES = 1 << 20;
const FOLLOW_BATCH = 1000;
/** `vesper events` without a range or a cursor: the newest this many (journalctl's -n, with a larger default) */
export const DEFAULT_TAIL = 100;

export function wireEvent(e: VesperEvent): apipb.IEvent {
  return {
    id: e.id ?? 0,
    vm: e.vm,
    plugin: e.plugin,
    instance: e.instance,
    event: e.event,
    guestTimeUs: e.guestTimeUs ?? 0,
    hostTimeUs: e.hostTimeUs,
    agentRun: e.source?.agentRun ?? '',
    seq: e.source?.seq ?? 0,
    disposition: e.disposition ?? '',
    payloadJson: JSON.stringify(e.payload),
  };
}

/** The gid of a group by name, from /etc/group; null when there is no such group. */
export function groupId(name: string): number | null {
  try {
    for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
      const [n, , gid] = line.split(':');
      if (n === name && gid !== undefined) return Number(gid);
    }
  } catch {
    /* no /etc/group: no group */
  }
  return null;
}

/** Whether something accepts connections on a unix socket (a live server, not a stale file). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ path });
    const t = setTimeout(() => done(true), 2000); // accepted but silent, or a full backlog: alive
    const done = (v: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

export class ApiServer {
  private server: Server | null = null;
  private readonly links = new Set<ApiLink>();
  requests = 0;

  constructor(
    private readonly m: DaemonApi,
    private readonly o: ApiServerOptions,
  ) {}

  async listen(): Promise<void> {
    const { socket, group, log } = this.o;
    const dir = dirname(socket);
    const created = !existsSync(dir);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    // vesperd's umask (0007 under systemd) would keep others — hacluster — from reaching a
    // socket in a directory of its own making.
    if (created && this.o.dirMode !== undefined) chmodSync(dir, this.o.dirMode);
    // A socket file of an earlier run is stale only if nobody answers on it: a live one is another
    // vesperd's (another store, the same socket), never ours to unlink.
    if (existsSync(socket)) {
      if (await answers(socket))
        throw new VesperError(
          ErrorCode.DAEMON_RUNNING,
          `${socket} is in use by another process (another vesperd?): not taken over; give this vesperd another daemon.socket`,
        );
      unlinkSync(socket);
    }
    const server = createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socket, () => resolve());
    });
    // Root and the group: mode 0660 with the group's gid. Without the group, root only.
    const gid = groupId(group);
    if (gid !== null) chownSync(socket, 0, gid);
    chmodSync(socket, gid !== null ? 0o660 : 0o600);
    if (gid === null) log.warn({ group }, 'no such group: the API socket is for root only');
    this.server = server;
    log.info({ socket, group: gid !== null ? group : null, only: this.o.only ?? null }, 'API listening');
  }

  async close(): Promise<void> {
    for (const l of this.links) l.socket.destroy();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
    try {
      unlinkSync(this.o.socket);
    } catch {
      /* already gone */
    }
  }

  private accept(s: Socket): void {
    const link = new ApiLink(s);
    this.links.add(link);
    const feeds = new Map<number, EventFeed>();
    link.on('close', () => {
      this.links.delete(link);
      for (const f of feeds.values()) f.close();
    });
    link.on('protocolError', (e) => {
      this.o.log.warn({ err: e.message }, 'bad API frame; closing the connection');
      s.destroy();
    });
    link.on('frame', (f) => {
      const req = f.request;
      if (!req) return;
      this.requests++;
      this.handle(link, f.id, req, feeds).catch((err: unknown) => link.send({ id: f.id, reply: errorReply(err) }));
    });
  }

  private async handle(link: ApiLink, id: number, req: apipb.Request, feeds: Map<number, EventFeed>): Promise<void> {
    const m = this.m;
    const reply = (r: apipb.IReply): void => void link.send({ id, reply: { done: true, ...r } });
    if (this.o.only && !this.o.only.includes(req.body ?? ''))
      throw new VesperError(
        ErrorCode.PERMISSION_DENIED,
        `${this.o.socket} takes only ${this.o.only.join(', ')} requests, not ${req.body ?? '(empty)'}; the vesper CLI's socket takes the others`,
      );
    switch (req.body) {
      case 'list':
        return reply({ vms: { vms: await m.listVms() } });
      case 'status':
        return reply({ vm: await m.vmStatus(need(req.status?.vm, 'vm')) });
      case 'probes':
        return reply({ probes: { probes: m.probeCatalogue() } });
      case 'attach': {
        const a = req.attach!;
        const attached = await m.attach(need(a.vm, 'vm'), a.probes ?? [], { ...(a.params ?? {}) }, a.instances ?? 0);
        return reply({ attached: { attached } });
      }
      case 'detach': {
        const d = req.detach!;
        const absent = (await m.detach(need(d.vm, 'vm'), d.probes ?? [])) ?? [];
        const gone = (d.probes ?? []).filter((p) => !absent.includes(p));
        const said = [
          ...(gone.length ? [`detached ${gone.join(', ')} from ${d.vm}`] : []),
          ...(absent.length
            ? [`${absent.join(', ')} ${absent.length === 1 ? 'was' : 'were'} not attached to ${d.vm} (nothing to do)`]
            : []),
        ];
        return reply({ ok: { message: said.join('; ') } });
      }
      case 'paramGet': {
        const g = req.paramGet!;
        return reply({ params: { vm: g.vm, plugin: g.plugin, params: m.paramGet(need(g.vm, 'vm'), need(g.plugin, 'plugin')) } });
      }
      case 'paramSet': {
        const p = req.paramSet!;
        const inst = (p.instance ?? -1) < 0 ? null : p.instance!;
        await m.paramSet(need(p.vm, 'vm'), need(p.plugin, 'plugin'), inst, { ...(p.params ?? {}) });
        return reply({ params: { vm: p.vm, plugin: p.plugin, params: m.paramGet(p.vm!, p.plugin!) } });
      }
      case 'filterList':
        return reply({ filters: { rules: m.filterList() } });
      case 'filterSet':
        if (!req.filterSet?.rule) throw new VesperError(ErrorCode.USAGE, 'filter set needs a rule');
        m.filterSet(req.filterSet.rule);
        return reply({ filters: { rules: m.filterList() } });
      case 'filterClear': {
        const c = req.filterClear!;
        const n = m.filterClear(Boolean(c.all), c.rule ?? null);
        return reply({ ok: { message: `${n} rule${n === 1 ? '' : 's'} removed` } });
      }
      case 'events':
        return this.events(link, id, req.events!, feeds);
      case 'analyze':
        if (!req.analyze) throw new VesperError(ErrorCode.USAGE, 'analyze needs a VM');
        return reply({ analysis: { json: await m.analyze(req.analyze) } });
      case 'sinks':
        return reply({ sinks: { sinks: m.sinkStates() } });
      case 'storeBackup':
        return reply({ ok: { message: await m.storeBackup(need(req.storeBackup?.path, 'path')) } });
      case 'hostEvent':
        if (!req.hostEvent) throw new VesperError(ErrorCode.USAGE, 'a host event needs its fields');
        return reply({ ok: { message: await m.submitHostEvent(req.hostEvent) } });
      case 'cancel': {
        const rid = req.cancel?.requestId ?? 0;
        feeds.get(rid)?.close();
        feeds.delete(rid);
        link.send({ id: rid, reply: { done: true, events: { events: [] } } });
        return reply({ ok: { message: 'cancelled' } });
      }
      default:
        throw new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `unknown request ${req.body ?? '(empty)'}`);
    }
  }

  /**
   * Past events from the store, oldest first, page by page at the pace the client reads them:
   * after a cursor (after_id) every later one, in a time range every one of it, else the newest
   * `limit` (DEFAULT_TAIL). A limit that leaves matching events out says so (`truncated`). With
   * follow, then everything new, in order, none twice.
   */
  private async events(link: ApiLink, id: number, e: apipb.IEvents, feeds: Map<number, EventFeed>): Promise<void> {
    const q: EventQuery = {
      vm: e.vm || undefined,
      plugin: e.plugin || undefined,
      event: e.event || undefined,
      sinceUs: Number(e.sinceUs ?? 0) || undefined,
      untilUs: Number(e.untilUs ?? 0) || undefined,
      includeDiscarded: Boolean(e.includeDiscarded),
    };
    const afterId = Number(e.afterId ?? 0) || undefined;
    const limit = e.limit || undefined;
    if (e.follow && q.untilUs !== undefined)
      throw new VesperError(ErrorCode.USAGE, 'an end time (--until) and following new events (-f) do not go together');
    // Subscribe before reading the store, so nothing published in between is missed; what the
    // store already returned is skipped by id.
    const feed = e.follow ? this.m.follow(q) : null;
    if (feed) feeds.set(id, feed);
    const open = (): boolean => !link.closed && (feed === null || feeds.get(id) === feed);
    try {
      const plan =
        afterId !== undefined || (limit === undefined && (q.sinceUs !== undefined || q.untilUs !== undefined))
          ? { lo: afterId, hi: undefined, max: limit ?? Infinity, truncated: false }
          : this.newest(q, limit ?? DEFAULT_TAIL);
      let lastId = plan.hi !== undefined ? plan.hi - 1 : (afterId ?? 0);
      let cursor = plan.lo;
      let sent = 0;
      let truncated = plan.truncated;
      while (sent < plan.max && open()) {
        const want = Math.min(FOLLOW_BATCH, plan.max - sent);
        const page = this.m.queryEvents({ ...q, afterId: cursor, beforeId: plan.hi, limit: want, order: 'asc' });
        if (page.length) {
          cursor = page[page.length - 1]!.id ?? cursor;
          lastId = Math.max(lastId, cursor ?? 0);
          sent += page.length;
          link.send({ id, reply: { done: false, events: { events: page.map(wireEvent) } } });
        }
        if (page.length < want) break;
        if (link.backlog > FOLLOW_BACKLOG_BYTES && !(await drained(link))) return;
      }
      if (!open()) return;
      if (sent >= plan.max && plan.hi === undefined && Number.isFinite(plan.max))
        truncated = this.m.queryEvents({ ...q, afterId: cursor, limit: 1, order: 'asc' }).length > 0;
      if (truncated) link.send({ id, reply: { done: false, events: { events: [], truncated: true } } });
      if (!feed) {
        link.send({ id, reply: { done: true, events: { events: [] } } });
        return;
      }
      this.followOn(link, id, q, feed, lastId);
    } catch (err) {
      feed?.close();
      feeds.delete(id);
      throw err;
    }
  }

  /**
   * Where the newest `n` matching events start: walks back from the newest, a page at a time,
   * keeping only ids. `lo` is just before the oldest of them, `hi` just after the newest.
   */
  private newest(q: EventQuery, n: number): { lo: number | undefined; hi: number | undefined; max: number; truncated: boolean } {
    let before: number | undefined;
    let count = 0;
    let start: number | undefined;
    let newestId: number | undefined;
    while (count <= n) {
      const want = Math.min(FOLLOW_BATCH, n + 1 - count);
      const page = this.m.queryEvents({ ...q, beforeId: before, limit: want, order: 'desc' });
      for (const ev of page) {
        count++;
        newestId ??= ev.id ?? 0;
        if (count <= n) start = ev.id ?? 0;
      }
      if (page.length < want) break;
      before = page[page.length - 1]!.id ?? 0;
    }
    if (start === undefined || newestId === undefined) return { lo: undefined, hi: undefined, max: 0, truncated: false };
    return { lo: start - 1, hi: newestId + 1, max: n, truncated: count > n };
  }

  /** After the past: what the feed hands out, newer than lastId; from the store when it fell behind. */
  private followOn(link: ApiLink, id: number, q: EventQuery, feed: EventFeed, lastId: number): void {
    let waitingDrain = false;
    // Set when the queue overwrote events before this follower took them. Every published event
    // was stored first, so the follower then reads from the store, page by page, until a page
    // comes back short; events the queue hands out meanwhile are in those pages too.
    let fromStore = false;
    // missed stays 0: what the queue overwrote comes from the store instead
    const send = (events: VesperEvent[]): void => {
      if (events.length) lastId = events[events.length - 1]!.id ?? lastId;
      link.send({ id, reply: { done: false, events: { events: events.map(wireEvent) } } });
    };
    const pump = (): void => {
      if (link.closed || waitingDrain) return;
      for (let rounds = 0; rounds < 100; rounds++) {
        if (link.backlog > FOLLOW_BACKLOG_BYTES) {
          waitingDrain = true;
          link.socket.once('drain', () => {
            waitingDrain = false;
            pump();
          });
          return;
        }
        const { events, missed } = feed.pull(FOLLOW_BATCH);
        if (missed > 0) fromStore = true;
        if (fromStore) {
          // Read after the pull: the page holds everything stored up to now, so a short page
          // leaves nothing between it and what the queue hands out next.
          const page = this.m.queryEvents({ ...q, afterId: lastId, limit: FOLLOW_BATCH, order: 'asc' });
          fromStore = page.length === FOLLOW_BATCH;
          if (page.length) send(page);
          else if (!events.length) return;
          continue;
        }
        const fresh = events.filter((x) => (x.id ?? 0) > lastId);
        if (!fresh.length) return;
        send(fresh);
      }
      setImmediate(pump); // a flood: let other work run between rounds
    };
    feed.onReadable(pump);
    pump();
  }
}

/** Resolves true when the link's socket drained, false when it closed first. */
function drained(link: ApiLink): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      link.socket.off('drain', onDrain);
      link.socket.off('close', onClose);
      resolve(ok);
    };
    const onDrain = (): void => done(true);
    const onClose = (): void => done(false);
    link.socket.once('drain', onDrain);
    link.socket.once('close', onClose);
  });
}

function need(v: string | null | undefined, what: string): string {
  if (!v) throw new VesperError(ErrorCode.USAGE, `missing ${what}`);
  return v;
}
