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
import { createServer, type Server, type Socket } from 'node:net';
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

/** What the API asks of the manager. */
export interface ManagerApi {
  listVms(): Promise<apipb.IVmSummary[]>;
  vmStatus(vm: string): Promise<apipb.IVmDetail>;
  probeCatalogue(): apipb.IProbeInfo[];
  attach(vm: string, probes: string[], params: Record<string, string>, instances: number): Promise<apipb.IAttachedProbe[]>;
  detach(vm: string, probes: string[]): Promise<void>;
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

export class ApiServer {
  private server: Server | null = null;
  private readonly links = new Set<ApiLink>();
  requests = 0;

  constructor(
    private readonly m: ManagerApi,
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
    if (existsSync(socket)) unlinkSync(socket); // a stale socket of an earlier run
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
        await m.detach(need(d.vm, 'vm'), d.probes ?? []);
        return reply({ ok: { message: `detached ${(d.probes ?? []).join(', ')} from ${d.vm}` } });
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

  /** Past events from the store; with follow, then everything new, in order, none twice. */
  private events(link: ApiLink, id: number, e: apipb.IEvents, feeds: Map<number, EventFeed>): void {
    const q: EventQuery = {
      vm: e.vm || undefined,
      plugin: e.plugin || undefined,
      event: e.event || undefined,
      sinceUs: e.sinceUs || undefined,
      afterId: e.afterId || undefined,
      limit: e.limit || undefined,
      includeDiscarded: Boolean(e.includeDiscarded),
    };
    // Subscribe before reading the store, so nothing published in between is missed; what the
    // store already returned is skipped by id.
    const feed = e.follow ? this.m.follow(q) : null;
    const past = this.m.queryEvents(q);
    let lastId = past.length ? (past[past.length - 1]!.id ?? 0) : (q.afterId ?? 0);
    for (let i = 0; i < past.length; i += FOLLOW_BATCH)
      link.send({ id, reply: { done: false, events: { events: past.slice(i, i + FOLLOW_BATCH).map(wireEvent) } } });
    if (!feed) {
      link.send({ id, reply: { done: true, events: { events: [] } } });
      return;
    }
    feeds.set(id, feed);
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
          const page = this.m.queryEvents({ ...q, afterId: lastId, limit: FOLLOW_BATCH });
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

function need(v: string | null | undefined, what: string): string {
  if (!v) throw new VesperError(ErrorCode.USAGE, `missing ${what}`);
  return v;
}
