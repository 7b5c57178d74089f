// vesperd: the manager. It finds every libvirt domain with the vesper channel and keeps one
// GuestLink per running one; turns libvirt's own events into events of the `libvirt` plugin;
// puts every event through the notification framework (filter, durable store, subscribers,
// actions); remembers attachments and filters in the store; and serves the local API. With a
// pacemaker section in the config it also takes Pacemaker's alerts (events of the `pacemaker`
// plugin) on a socket of their own.
//
// VMs of the config's ssh.targets are VMs too, reached over SSH (host/daemon/ssh-link.ts): with
// or without a libvirt domain of that name. A domain that has the vesper channel is reached over
// the channel (its SSH entry unused, said once in the log); one without it, or not running here,
// over SSH. The link follows the domain: a channel hot-plugged later takes over from SSH.
import type { Logger } from 'pino';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { API_MAX_FRAME_BYTES, type apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { PacemakerActions, DEFAULT_PACEMAKER_SETTINGS } from '../actions/pacemaker.js';
import { analysisJson, analyzeFromStore } from '../analysis/analyze.js';
import { actionProblemForVm, parseAction } from '../actions/parse.js';
import { ActionRunner } from '../actions/runner.js';
import { FenceLock } from '../actions/fence-lock.js';
import { ActionRateLimiter } from '../actions/rate-limit.js';
import type { Config } from '../config/schema.js';
import type { AttachedProbe } from '../channel/guest-session.js';
import { loadOrCreateHostKey, type HostKey } from '../keys.js';
import { channelSocketPath, AGENT_CHANNEL } from '../libvirt/channel.js';
import { LibvirtEvents, type LibvirtEvent } from '../libvirt/events.js';
import type { DomainInfo, Hypervisor } from '../libvirt/hypervisor.js';
import { UnraidHypervisor } from '../libvirt/unraid.js';
import type { VesperEvent } from '../notify/event.js';
import { FilterTable, type FilterRule } from '../notify/filter.js';
import { NotificationFramework } from '../notify/framework.js';
import { HOST_PLUGINS, PACEMAKER_PLUGIN, hostPluginSpec } from '../notify/host-plugins.js';
import { paramTypeOfManifest } from '../notify/params.js';
import { EventQueue } from '../notify/queue.js';
import { PluginRegistry } from '../notify/registry.js';
import { eventOfHostRequest, resourceIndex } from '../pacemaker/alert-event.js';
import { probeNames, readProbeBundle } from '../probes/package.js';
import { checkFilterKey, checkProbeParamValue, notPushedReason, type KnownPlugin } from './api-checks.js';
import { EventStore } from '../store/event-store.js';
import { ApiServer, type EventFeed, type ManagerApi } from './api-server.js';
import type { EventQuery } from '../store/event-query.js';
import { GuestLink, unixLink, type LinkSpec } from './guest-link.js';
import { sshLink } from './ssh-link.js';
import { DaemonLock, lockPathOf } from './daemon-lock.js';
import { LibvirtConnection } from './libvirt-connection.js';
import { readPacer } from '../channel/read-pacer.js';
import { IngestBatcher } from './ingest.js';
import { eventOfLibvirt } from './libvirt-plugin.js';

/** libvirt has no domain of this name: an SSH target only */
const EXTERNAL = 'external';

interface VmEntry {
  name: string;
  /** libvirt's state, or EXTERNAL */
  state: string;
  socket: string | null;
  link: GuestLink | null;
  /** the SSH target the config gives this VM, if any */
  ssh: string | null;
  /** the SSH entry was said to be unused (the domain has the channel) */
  sshShadowLogged?: boolean;
  /** plugin handles registered for this VM: host plugins and attached probes */
  handles: Map<string, number>;
}

export interface VesperdOptions {
  config: Config;
  log: Logger;
  /** the hypervisor (default: UnraidHypervisor on config.libvirt.uri) */
  hypervisor?: Hypervisor;
  /** the host key that signs probe modules (default: loadOrCreateHostKey()) */
  key?: HostKey;
}

export class Vesperd implements ManagerApi {
  readonly registry = new PluginRegistry();
  readonly filters = new FilterTable();
  readonly queue: EventQueue;
  readonly framework: NotificationFramework;
  readonly store: EventStore;
  readonly batcher: IngestBatcher;
  readonly vms = new Map<string, VmEntry>();
  /** libvirt, when there is a connection (optional: see libvirt-connection.ts) */
  private hv: Hypervisor | null = null;
  private libvirt: LibvirtConnection | null = null;
  /** other libvirts (failover standbys), connected once and kept */
  private readonly others = new Map<string, Promise<Hypervisor>>();
  /** libvirt.domains as one regular expression */
  private readonly domainFilter: RegExp;
  private libvirtEvents: LibvirtEvents | null = null;
  private api: ApiServer | null = null;
  /** Pacemaker's alert agent's socket (HostEvent only), when the config has a pacemaker section */
  private alertApi: ApiServer | null = null;
  private actions: ActionRunner;
  private readonly pacemaker: PacemakerActions;
  /** Pacemaker resource → VM, for alerts */
  private readonly resourceVm: Map<string, string>;
  private key: HostKey;
  /** this vesperd's hold on its store (none for an in-memory store) */
  private readonly lock: DaemonLock | null;
  private timers: NodeJS.Timeout[] = [];
  private stopped = false;
  private scanning: Promise<void> | null = null;
  private readonly log: Logger;

  constructor(private readonly o: VesperdOptions) {
    const c = o.config;
    this.log = o.log;
    this.domainFilter = globsToRegExp(c.libvirt.domains ?? ['*']);
    // Before anything is opened or created: a second vesperd on this store stops here.
    if (c.store.path !== ':memory:') mkdirSync(dirname(c.store.path), { recursive: true, mode: 0o750 }); // as the store makes it
    this.lock = c.store.path === ':memory:' ? null : DaemonLock.acquire(lockPathOf(c.store.path));
    try {
      this.key = o.key ?? loadOrCreateHostKey();
      this.store = EventStore.open(c.store.path, {
        sync: c.store.sync,
        retention: { maxAgeMs: c.store.retention.maxAge, maxBytes: c.store.retention.maxSize, vmShare: c.store.retention.vmShare },
      });
    } catch (err) {
      this.lock?.release();
      throw err;
    }
    this.queue = new EventQueue();
    const pc = c.pacemaker;
    this.pacemaker = new PacemakerActions(
      pc
        ? { vms: pc.vms, node: pc.node, healthAttribute: pc.healthAttribute, toolsTimeoutMs: pc.toolsTimeout }
        : DEFAULT_PACEMAKER_SETTINGS,
      this.log,
    );
    this.resourceVm = resourceIndex(pc?.vms ?? {});
    this.actions = new ActionRunner({
      hypervisorFor: (uri?: string) => this.hypervisorFor(uri),
      standbyUri: c.actions.standbyUri,
      lock: new FenceLock(c.actions.fenceLockDir),
      limiter: new ActionRateLimiter({ max: c.actions.rateLimit.max, windowMs: c.actions.rateLimit.per }),
      execTimeoutMs: c.actions.execTimeout,
      pacemaker: this.pacemaker,
      owner: `${hostname()}/${process.pid}`,
      log: this.log,
      onResult: (ev, r) =>
        this.hostEvent({
          vm: ev.vm,
          plugin: 'action',
          instance: 0,
          event: r.ok ? 'done' : 'failed',
          guestTimeUs: null,
          hostTimeUs: Date.now() * 1000,
          source: null,
          payload: {
            action: r.action,
            ok: r.ok,
            error: r.error ?? null,
            detail: r.detail ?? null,
            cause: { id: ev.id, plugin: ev.plugin, event: ev.event },
          },
        }),
    });
    this.framework = new NotificationFramework({
      registry: this.registry,
      filters: this.filters,
      queue: this.queue,
      store: this.store,
      actions: { run: (ev, action, args) => this.actions.run(ev, action, args) },
    });
    this.batcher = new IngestBatcher(this.framework);
    if (c.channel.readCoalesce !== undefined) readPacer.windowMs = c.channel.readCoalesce;
  }

  async start(): Promise<void> {
    const c = this.o.config;
    // Filters: the config's first, then what was set at run time (stored) on top. A stored
    // rule keeps the whole FilterRule as its decision column (see filterSet).
    for (const f of c.filters) this.filters.set(f);
    for (const f of this.store.listFilters()) this.filters.set(f.decision as FilterRule);
    if (this.o.hypervisor) await this.libvirtUp(this.o.hypervisor);
    else {
      this.libvirt = new LibvirtConnection({
        uri: c.libvirt.uri,
        log: this.log,
        connect: (uri) => UnraidHypervisor.connect(uri),
        onConnected: (hv) => this.libvirtUp(hv),
      });
      await this.libvirt.start();
    }
    await this.rescan();
    this.api = new ApiServer(this, { socket: c.daemon.socket, group: c.daemon.group, log: this.log });
    await this.api.listen();
    if (c.pacemaker) {
      // The host gets node, fencing and attribute alerts, and those of unmapped resources.
      this.registry.register(hostPluginSpec(PACEMAKER_PLUGIN, ''));
      this.alertApi = new ApiServer(this, {
        socket: c.pacemaker.alertSocket,
        group: c.pacemaker.alertGroup,
        log: this.log,
        only: ['hostEvent'],
        dirMode: 0o755,
      });
      await this.alertApi.listen();
    }
    // Domains defined or started while we watch come as libvirt events; this slow rescan only
    // catches what events cannot tell (a channel added to a definition).
    this.timers.push(setInterval(() => void this.rescan(), 30_000));
    this.timers.push(setInterval(() => this.prune(), 60_000));
    for (const t of this.timers) t.unref();
    this.log.info({ vms: this.vms.size, store: c.store.path }, 'vesperd started');
  }

  /** libvirt is there (at start, or later): its events, then its domains. */
  private async libvirtUp(hv: Hypervisor): Promise<void> {
    if (this.stopped) return;
    this.hv = hv;
    const ev = new LibvirtEvents(this.o.config.libvirt.uri);
    this.libvirtEvents = ev;
    ev.on('event', (e) => this.onLibvirt(e));
    // Events missed while virsh was away: reconcile with libvirt's state.
    ev.on('ready', () => void this.rescan());
    ev.start();
    await ev.whenReady(30_000).catch((err: Error) => this.log.warn({ err: err.message }, 'libvirt events not ready yet'));
    await this.rescan();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    await this.api?.close();
    await this.alertApi?.close();
    for (const v of this.vms.values()) v.link?.stop();
    this.batcher.flush();
    await this.libvirtEvents?.stop();
    // An action in flight (a failover waiting for its fence) gets a few seconds, not forever.
    await Promise.race([this.actions.idle(), new Promise((r) => setTimeout(r, 5000).unref())]);
    await this.libvirt?.stop(); // closes its connection, if it made one
    for (const h of this.others.values()) await h.then((x) => x.close()).catch(() => undefined);
    this.store.close();
    this.lock?.release();
    this.log.info('vesperd stopped');
  }

  private hypervisorFor(uri?: string): Promise<Hypervisor> {
    if (!uri || uri === this.o.config.libvirt.uri)
      return this.hv
        ? Promise.resolve(this.hv)
        : (this.libvirt?.get() ?? Promise.reject(new VesperError(ErrorCode.LIBVIRT_UNAVAILABLE, 'no libvirt')));
    let h = this.others.get(uri);
    if (!h) {
      h = UnraidHypervisor.connect(uri);
      this.others.set(uri, h);
      h.catch(() => this.others.delete(uri)); // try again next time
    }
    return h;
  }

  // ------------------------------------------------------------------ VMs and links

  /** Brings the VM table in line with libvirt: new domains, gone domains, channel paths. */
  rescan(): Promise<void> {
    if (!this.scanning)
      this.scanning = this.doRescan()
        .catch((err: Error) => this.log.warn({ err: err.message }, 'rescan failed'))
        .finally(() => (this.scanning = null));
    return this.scanning;
  }

  private async doRescan(): Promise<void> {
    if (this.stopped) return;
    let doms: DomainInfo[] | null = null;
    let libvirtErr: Error | null = null;
    try {
      // without libvirt (not there, or not yet), no domain is known: SSH targets only
      doms = this.hv ? await this.hv.listDomains() : [];
    } catch (err) {
      libvirtErr = err as Error; // SSH targets are still brought up; libvirt's VMs stay as they were
    }
    const seen = new Set<string>();
    for (const d of doms ?? []) {
      if (!this.watches(d.name)) continue; // another manager's, or the operator left it out
      seen.add(d.name);
      await this.refreshVm(d);
    }
    // SSH targets libvirt does not have (or no longer has) are VMs of their own.
    for (const name of Object.keys(this.o.config.ssh.targets))
      if (!seen.has(name) && (doms || !this.vms.has(name))) {
        seen.add(name);
        await this.refreshVm({ name, state: EXTERNAL });
      }
    if (libvirtErr) throw libvirtErr;
    for (const name of [...this.vms.keys()]) if (!seen.has(name)) this.forgetVm(name);
  }

  private async refreshVm(d: Pick<DomainInfo, 'name'> & { state: string }): Promise<void> {
    let v = this.vms.get(d.name);
    const sshTarget = this.o.config.ssh.targets[d.name];
    if (v && (v.state === EXTERNAL) !== (d.state === EXTERNAL)) {
      // An SSH target that became a libvirt domain (or stopped being one): the libvirt plugin
      // comes or goes; the link is decided below.
      const h = v.handles.get('libvirt');
      if (h !== undefined) {
        this.registry.unregister(h);
        v.handles.delete('libvirt');
      } else {
        const p = HOST_PLUGINS.find((x) => x.name === 'libvirt')!;
        v.handles.set(p.name, this.registry.register(hostPluginSpec(p, d.name)));
      }
    }
    if (!v) {
      v = { name: d.name, state: d.state, socket: null, link: null, ssh: sshTarget?.target ?? null, handles: new Map() };
      this.vms.set(d.name, v);
      for (const p of HOST_PLUGINS)
        if (p.name !== 'libvirt' || d.state !== EXTERNAL)
          v.handles.set(
            p.name,
            this.registry.register(
              hostPluginSpec(
                this.inEffect(p),
                d.name,
                p.params.length
                  ? () => Promise.reject(new VesperError(ErrorCode.USAGE, `${p.name} parameters are set in the config file (channel: ...)`))
                  : undefined,
              ),
            ),
          );
      if (this.o.config.pacemaker && Object.hasOwn(this.o.config.pacemaker.vms, d.name))
        v.handles.set(PACEMAKER_PLUGIN.name, this.registry.register(hostPluginSpec(PACEMAKER_PLUGIN, d.name)));
    }
    v.state = d.state;
    const running = d.state === 'running' || d.state === 'paused' || d.state === 'idle';
    let socket: string | null = null;
    if (running && d.state !== EXTERNAL) {
      try {
        if (this.hv) socket = channelSocketPath(await this.hv.xml(d.name), this.o.config.libvirt.channel ?? AGENT_CHANNEL);
      } catch (err) {
        this.log.warn({ vm: d.name, err: (err as Error).message }, 'cannot read the domain XML');
      }
    }
    // The channel when the domain has it, else SSH when the config names a target, else none.
    const want: { transport: 'virtio' | 'ssh'; where: string } | null = socket
      ? { transport: 'virtio', where: socket }
      : sshTarget
        ? { transport: 'ssh', where: sshTarget.target }
        : null;
    if (socket && sshTarget && !v.sshShadowLogged) {
      v.sshShadowLogged = true;
      this.log.info({ vm: d.name, target: sshTarget.target }, 'the domain has the vesper channel: reached over it, its SSH target unused');
    }
    const have = v.link ? { transport: v.link.spec.transport, where: v.link.spec.transport === 'ssh' ? (v.ssh ?? '') : v.socket } : null;
    v.socket = socket;
    if (want?.transport !== have?.transport || want?.where !== have?.where) {
      v.link?.stop();
      v.link = null;
      if (want) {
        v.link = this.newLink(d.name, want.transport === 'virtio' ? unixLink(want.where) : sshLink(sshTarget!, this.o.config.ssh));
        v.link.start();
        if (want.transport === 'ssh') this.log.info({ vm: d.name, target: want.where }, 'reaching the agent over SSH');
      }
    }
    this.ensureAttachments(v);
  }

  private newLink(vm: string, spec: LinkSpec): GuestLink {
    const c = this.o.config.channel;
    return new GuestLink(vm, spec, {
      key: this.key,
      batcher: this.batcher,
      heldFor: (name, run) => this.store.highestSeq(name, run),
      hostEvent: (e) => this.hostEvent(e),
      log: this.log,
      keepaliveMs: c.keepalive,
      minBackoffMs: c.reconnectMin,
      maxBackoffMs: c.reconnectMax,
      budget: { recordsPerS: c.ingest.recordsPerS, bytesPerS: c.ingest.bytesPerS, burstMs: c.ingest.burst },
    });
  }

  /** Stored attachments (and the config's attach rules for a VM seen the first time) onto the link. */
  private ensureAttachments(v: VmEntry): void {
    let stored = this.store.listAttachments(v.name);
    if (!stored.length && !this.store.getMeta(`seen:${v.name}`)) {
      for (const rule of this.o.config.attach)
        if (rule.vm === '*' || rule.vm === v.name)
          for (const p of rule.probes) this.store.saveAttachment(v.name, p.name, { instances: p.instances ?? 1, params: p.params ?? {} });
      this.store.setMeta(`seen:${v.name}`, String(Date.now()));
      stored = this.store.listAttachments(v.name);
    }
    for (const a of stored) {
      this.registerProbe(v, a.probe, a.instances);
      if (v.link && !v.link.attached.has(a.probe))
        v.link
          .attach({ name: a.probe, instances: a.instances, params: a.params })
          .catch((err: Error) => this.log.warn({ vm: v.name, probe: a.probe, err: err.message }, 'probe not pushed'));
    }
  }

  private forgetVm(name: string): void {
    const v = this.vms.get(name);
    if (!v) return;
    v.link?.stop();
    for (const h of v.handles.values()) this.registry.unregister(h);
    this.vms.delete(name);
  }

  /** A host plugin with the values the config sets shown as its defaults (`param get VM channel`). */
  private inEffect(p: (typeof HOST_PLUGINS)[number]): (typeof HOST_PLUGINS)[number] {
    if (p.name !== 'channel') return p;
    const c = this.o.config.channel;
    const now: Record<string, number> = { keepalive: c.keepalive, reconnect_min: c.reconnectMin, reconnect_max: c.reconnectMax };
    return { ...p, params: p.params.map((x) => (now[x.name] !== undefined ? { ...x, default: String(now[x.name]) } : x)) };
  }

  /** Every plugin a filter rule may name: the probes, the host's plugins, and their events. */
  private knownPlugins(): KnownPlugin[] {
    const probes = probeNames().map((n) => {
      const m = readProbeBundle(n).manifest;
      return { name: m.name, events: m.events.map((e) => e.name) };
    });
    const host = [...HOST_PLUGINS, PACEMAKER_PLUGIN].map((p) => ({ name: p.name, events: p.events.map((e) => e.name) }));
    // action results (host/actions) and the agent's own records
    const action = { name: 'action', events: ['done', 'failed'] };
    const agent = { name: 'agent', events: null }; // the agent's own records (probe faults...)
    return [...probes, ...host, action, agent];
  }

  private registerProbe(v: VmEntry, probe: string, instances: number): void {
    if (v.handles.has(probe)) return;
    const m = readProbeBundle(probe).manifest;
    const handle = this.registry.register({
      vm: v.name,
      name: probe,
      kind: 'probe',
      instances,
      events: m.events.map((e) => ({ name: e.name, description: e.description })),
      params: m.params.map((p) => ({
        name: p.name,
        type: paramTypeOfManifest(p.type),
        default: p.default,
        description: p.description,
        perInstance: true,
      })),
      setParams: async (instance, params) => {
        // Remember first: a guest that is down gets them with the probe at its next link.
        const a = this.store.listAttachments(v.name).find((x) => x.probe === probe);
        if (a && instance === null)
          this.store.saveAttachment(v.name, probe, { instances: a.instances, params: { ...a.params, ...params } });
        const link = this.vms.get(v.name)?.link;
        const att = link?.attached.get(probe);
        if (att && instance === null) att.params = { ...(att.params ?? {}), ...params };
        if (att && instance !== null)
          att.instanceParams = { ...(att.instanceParams ?? {}), [instance]: { ...(att.instanceParams?.[instance] ?? {}), ...params } };
        await link?.setParams(probe, instance, params);
      },
    });
    v.handles.set(probe, handle);
  }

  /** libvirt.domains: the domains this manager watches (globs). */
  private watches(domain: string): boolean {
    return this.domainFilter.test(domain);
  }

  private onLibvirt(e: LibvirtEvent): void {
    if (e.domain && !this.watches(e.domain)) return;
    const ev = eventOfLibvirt(e);
    if (ev) this.hostEvent(ev);
    // Started, stopped, defined, undefined, device changes: the VM table may have changed.
    if (e.kind === 'lifecycle' || e.kind === 'device-added' || e.kind === 'device-removed' || e.kind === 'panic') void this.rescan();
  }

  /** A host-side event: through the same group commit as guest records. */
  hostEvent(ev: VesperEvent): void {
    this.batcher.push([ev], (err) => {
      if (err) this.log.error({ vm: ev.vm, plugin: ev.plugin, event: ev.event, err: err.message }, 'host event not stored');
    });
  }

  private prune(): void {
    try {
      const { deleted } = this.store.prune();
      if (deleted) this.log.info({ deleted }, 'retention: old events deleted');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'retention failed');
    }
  }

  private vmOrThrow(vm: string): VmEntry {
    const v = this.vms.get(vm);
    if (!v)
      throw new VesperError(
        ErrorCode.VM_NOT_FOUND,
        `no VM named ${vm} (vesper list shows the VMs libvirt has and the config's ssh.targets)`,
      );
    return v;
  }

  // ------------------------------------------------------------------ the API

  async listVms(): Promise<apipb.IVmSummary[]> {
    await this.rescan();
    return [...this.vms.values()].sort((a, b) => a.name.localeCompare(b.name)).map((v) => this.summary(v));
  }

  private summary(v: VmEntry): apipb.IVmSummary {
    const st = this.store.vmStats(v.name);
    return {
      name: v.name,
      state: v.state,
      hasChannel: Boolean(v.socket),
      link: v.link ? v.link.state : v.state === 'running' ? 'no-channel' : 'stopped',
      transport: v.link?.spec.transport ?? 'none',
      target: v.ssh ?? '',
      probes: this.store.listAttachments(v.name).map((a) => a.probe),
      events: st?.events ?? 0,
      lastEventUs: st?.newestUs ?? 0,
    };
  }

  async vmStatus(vm: string): Promise<apipb.IVmDetail> {
    await this.rescan();
    const v = this.vmOrThrow(vm);
    const hello = v.link?.session.client?.hello;
    const loaded = v.link?.loadedNow() ?? new Set<string>();
    return {
      summary: this.summary(v),
      agentVersion: hello?.agentVersion ?? '',
      kernel: hello?.kernelRelease ?? '',
      bootId: hello?.bootId ?? '',
      agentPid: hello?.agentPid ?? 0,
      heartbeatLost: v.link?.heartbeatLost ?? false,
      recordsReceived: v.link?.recordsReceived ?? 0,
      recordsLost: v.link?.recordsLost ?? 0,
      channelSocket: v.socket ?? '',
      linkErrorCode: v.link?.linkError?.code ?? '',
      linkError: v.link?.linkError?.message ?? '',
      hostKey: v.link?.spec.hostKey?.() ?? '',
      attached: this.store
        .listAttachments(vm)
        .map((a) => ({ name: a.probe, instances: a.instances, params: a.params, loaded: loaded.has(a.probe) })),
    };
  }

  probeCatalogue(): apipb.IProbeInfo[] {
    return probeNames().map((n) => {
      const m = readProbeBundle(n).manifest;
      return {
        name: m.name,
        version: m.version,
        description: m.description,
        events: m.events.map((e) => e.name),
        params: m.params.map((p) => ({ name: p.name, type: p.type, default: p.default, description: p.description })),
        defaultInstances: 1,
      };
    });
  }

  async attach(vm: string, probes: string[], params: Record<string, string>, instances: number): Promise<apipb.IAttachedProbe[]> {
    if (!probes.length) throw new VesperError(ErrorCode.USAGE, 'attach needs at least one probe');
    const v = this.vmOrThrow(vm);
    const out: apipb.IAttachedProbe[] = [];
    for (const name of probes) {
      const m = readProbeBundle(name).manifest; // VSP_PROBE_NOT_FOUND for a wrong name
      const n = instances || 1;
      if (n > m.maxInstances) throw new VesperError(ErrorCode.PROBE_BAD_PARAM, `${name} allows at most ${m.maxInstances} instances`);
      const known = new Set(m.params.map((p) => p.name));
      const mine = Object.fromEntries(Object.entries(params).filter(([k]) => known.has(k)));
      const unknown = probes.length === 1 ? Object.keys(params).filter((k) => !known.has(k)) : [];
      if (unknown.length)
        throw new VesperError(
          ErrorCode.PARAM_UNKNOWN,
          `${name} has no parameter ${unknown.join(', ')} (it has: ${[...known].join(', ') || 'none'})`,
        );
      for (const [k, val] of Object.entries(mine)) checkProbeParamValue(name, k, val);
      const p: AttachedProbe = { name, instances: n, params: mine };
      // Re-attaching with other instances: the registration changes with it.
      const old = v.handles.get(name);
      if (old !== undefined && this.registry.byHandleOf(old)?.instances !== n) {
        this.registry.unregister(old);
        v.handles.delete(name);
      }
      if (v.link) await v.link.attach(p); // the agent's refusal (bad parameter value...) stops here
      this.store.saveAttachment(vm, name, { instances: n, params: mine });
      this.registerProbe(v, name, n);
      out.push({
        name,
        instances: n,
        params: mine,
        loaded: v.link?.loadedNow().has(name) ?? false,
        pending: v.link ? '' : notPushedReason(vm, v.state, this.o.config.libvirt.channel ?? AGENT_CHANNEL),
      });
    }
    return out;
  }

  /** Detaching what is not attached is not an error (as `agent uninstall`): returns those names. */
  async detach(vm: string, probes: string[]): Promise<string[]> {
    const v = this.vmOrThrow(vm);
    const have = new Set(this.store.listAttachments(vm).map((a) => a.probe));
    const absent: string[] = [];
    for (const name of probes) {
      if (!have.has(name)) {
        readProbeBundle(name); // a name no probe has is still VSP_PROBE_NOT_FOUND
        absent.push(name);
        continue;
      }
      this.store.removeAttachment(vm, name);
      if (v.link?.attached.has(name)) await v.link.detach(name);
      const h = v.handles.get(name);
      if (h !== undefined) this.registry.unregister(h);
      v.handles.delete(name);
    }
    return absent;
  }

  paramGet(vm: string, plugin: string): Record<string, string> {
    this.vmOrThrow(vm);
    const { common, instances } = this.framework.getParams(vm, plugin);
    // A probe's values as remembered with its attachment (they outlive a vesperd restart).
    const stored = this.store.listAttachments(vm).find((a) => a.probe === plugin)?.params ?? {};
    const out: Record<string, string> = { ...common, ...stored };
    instances.forEach((p, i) => {
      for (const [k, val] of Object.entries(p)) if (common[k] !== val) out[`${k}[${i}]`] = val;
    });
    return out;
  }

  async paramSet(vm: string, plugin: string, instance: number | null, params: Record<string, string>): Promise<void> {
    this.vmOrThrow(vm);
    for (const [k, val] of Object.entries(params)) checkProbeParamValue(plugin, k, val);
    for (const [k, val] of Object.entries(params)) await this.framework.setParam(vm, plugin, instance, k, val);
  }

  filterList(): apipb.IFilterRule[] {
    return this.filters.list().map((r) => ({
      vm: r.vm,
      plugin: r.plugin,
      instance: String(r.instance),
      event: r.event,
      decision: r.decision.kind,
      action: r.decision.kind === 'action' ? r.decision.action : '',
      args: r.decision.kind === 'action' ? r.decision.args : [],
    }));
  }

  filterSet(w: apipb.IFilterRule): void {
    const rule = ruleOfWire(w);
    checkFilterKey(rule.plugin, rule.event, this.knownPlugins()); // a rule nothing could match
    // An action that could never run is refused now, not when the failure comes.
    if (rule.decision.kind === 'action') {
      let parsed;
      try {
        parsed = parseAction(rule.decision.action, rule.decision.args);
      } catch (err) {
        throw new VesperError(ErrorCode.FILTER_INVALID, (err as Error).message);
      }
      const problem = actionProblemForVm(parsed, rule.vm, (vm) => this.pacemaker.resourceOf(vm) !== undefined);
      if (problem) throw new VesperError(ErrorCode.FILTER_INVALID, problem);
    }
    this.filters.set(rule);
    this.store.saveFilter({ vm: rule.vm, plugin: rule.plugin, instance: String(rule.instance), event: rule.event, decision: rule });
  }

  filterClear(all: boolean, w: apipb.IFilterRule | null): number {
    if (all) {
      this.store.clearFilters();
      return this.filters.clear();
    }
    if (!w) throw new VesperError(ErrorCode.USAGE, 'filter clear needs a rule key or --all');
    const k = ruleOfWire({ ...w, decision: 'notify' });
    this.store.deleteFilter({ vm: k.vm, plugin: k.plugin, instance: String(k.instance), event: k.event });
    return this.filters.clear(k);
  }

  /** Pacemaker's alerts (via `vesper alert-pacemaker`): stored before the reply, so a caller that got it can query the event. */
  submitHostEvent(w: apipb.IHostEvent): Promise<string> {
    const ev = eventOfHostRequest(w, this.resourceVm, Date.now() * 1000);
    this.log.debug({ vm: ev.vm, plugin: ev.plugin, event: ev.event }, 'host event from outside');
    return new Promise((resolve, reject) =>
      this.batcher.push([ev], (err) => {
        if (err) reject(new VesperError(ErrorCode.STORE_FAILED, `${ev.plugin} ${ev.event} not stored: ${err.message}`, '', { cause: err }));
        else resolve(`${ev.plugin} ${ev.event} for ${ev.vm || 'the host'}`);
      }),
    );
  }

  /**
   * The analysis of a VM's failure window: the store's own query (the one `vesper events` uses)
   * reads the window once; a VM gone from libvirt is still analysed from what the store holds.
   */
  async analyze(req: apipb.IAnalyze): Promise<string> {
    const vm = req.vm ?? '';
    this.batcher.flush(); // what was received is part of the answer
    try {
      const a = analyzeFromStore(this.store, {
        vm,
        atUs: Number(req.atUs ?? 0),
        last: Boolean(req.last),
        windowUs: Number(req.windowUs ?? 0),
      });
      if (a.eventCount === 0 && !this.vms.has(vm) && this.store.vmStats(vm).events === 0) throw unknownVm(vm);
      // Room for the frame's own fields next to the text.
      return analysisJson(a, API_MAX_FRAME_BYTES - 64 * 1024);
    } catch (err) {
      if (
        err instanceof VesperError &&
        err.code === ErrorCode.ANALYSIS_NO_FAILURE &&
        !this.vms.has(vm) &&
        this.store.vmStats(vm).events === 0
      )
        throw unknownVm(vm);
      throw err;
    }
  }

  queryEvents(q: EventQuery): VesperEvent[] {
    this.batcher.flush(); // what was received is visible
    return this.store.query({ ...q, limit: q.limit ?? 1000, order: q.order ?? 'asc' });
  }

  follow(q: EventQuery): EventFeed {
    // Discarded events are published only while someone follows them (`events -f --all`).
    if (q.includeDiscarded) this.queue.discardedWanted++;
    let open = true;
    const sub = this.queue.subscribe({
      match: (e) =>
        (!q.vm || e.vm === q.vm) &&
        (!q.plugin || e.plugin === q.plugin) &&
        (!q.event || e.event === q.event) &&
        (q.includeDiscarded || e.disposition !== 'discard'),
    });
    return {
      pull: (max) => sub.take(max),
      onReadable: (cb) => sub.onReadable(cb),
      close: () => {
        if (open && q.includeDiscarded) this.queue.discardedWanted--;
        open = false;
        sub.close();
      },
    };
  }
}

function unknownVm(vm: string): VesperError {
  return new VesperError(ErrorCode.VM_NOT_FOUND, `no VM named ${vm}: libvirt does not have it and the store holds no events for it`);
}

function ruleOfWire(w: apipb.IFilterRule): FilterRule {
  const inst = w.instance === '*' || !w.instance ? '*' : Number(w.instance);
  if (inst !== '*' && (!Number.isInteger(inst) || inst < 0))
    throw new VesperError(ErrorCode.FILTER_INVALID, `instance must be a number or '*', got ${JSON.stringify(w.instance)}`);
  const kind = w.decision ?? 'notify';
  const decision =
    kind === 'action'
      ? { kind: 'action' as const, action: w.action ?? '', args: w.args ?? [] }
      : kind === 'discard'
        ? { kind: 'discard' as const }
        : { kind: 'notify' as const };
  return { vm: w.vm || '*', plugin: w.plugin || '*', instance: inst, event: w.event || '*', decision };
}

/** Domain-name globs (`*`, `?`) as one anchored regular expression. */
export function globsToRegExp(globs: string[]): RegExp {
  const one = (g: string): string =>
    g
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.');
  return new RegExp(`^(?:${globs.map(one).join('|')})$`);
}
