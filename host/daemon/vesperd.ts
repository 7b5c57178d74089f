// vesperd: the daemon, its parts wired together and its lifecycle. It keeps the VM table
// (vm-table.ts: every libvirt domain with the vesper channel and every SSH target, one GuestLink
// each); turns libvirt's own events into events of the `libvirt` plugin; puts every event
// through the notification framework (filter, durable store, subscribers, actions); and serves
// the local API (api-service.ts behind api-server.ts). With a pacemaker section in the config it
// also takes Pacemaker's alerts (events of the `pacemaker` plugin) on a socket of their own.
// The read pacer and the ack coalescer its links share are its own, made here.
import type { Logger } from 'pino';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { PacemakerActions, DEFAULT_PACEMAKER_SETTINGS } from '../actions/pacemaker.js';
import { ActionRunner } from '../actions/runner.js';
import { FenceLock } from '../actions/fence-lock.js';
import { ActionRateLimiter } from '../actions/rate-limit.js';
import { ReadPacer } from '../channel/read-pacer.js';
import type { Config } from '../config/schema.js';
import { loadOrCreateHostKey, type HostKey } from '../keys.js';
import { LibvirtEvents, type LibvirtEvent } from '../libvirt/events.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { UnraidHypervisor } from '../libvirt/unraid.js';
import type { VesperEvent } from '../notify/event.js';
import { FilterTable, type FilterRule } from '../notify/filter.js';
import { NotificationFramework } from '../notify/framework.js';
import { PACEMAKER_PLUGIN, hostPluginSpec } from '../notify/host-plugins.js';
import { EventQueue } from '../notify/queue.js';
import { PluginRegistry } from '../notify/registry.js';
import { resourceIndex } from '../pacemaker/alert-event.js';
import { EventStore } from '../store/event-store.js';
import { Metrics, type LinkReading } from '../metrics/metrics.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { metricsListenText } from '../config/metrics-config.js';
import type { apipb } from '../../proto/api-codec.js';
import { planReload, takeLiveSettings, type ReloadPlan } from './reload.js';
import { Exporter } from '../export/exporter.js';
import { buildSinks } from '../export/kinds.js';
import { AckCoalescer } from './ack-coalescer.js';
import { ApiServer } from './api-server.js';
import { ApiService } from './api-service.js';
import { DaemonLock, lockPathOf } from './daemon-lock.js';
import { IngestBatcher } from './ingest.js';
import { LibvirtConnection } from './libvirt-connection.js';
import { HostPauses } from './host-pause.js';
import { eventOfLibvirt } from './libvirt-plugin.js';
import { VmTable, type VmEntry } from './vm-table.js';

export interface VesperdOptions {
  config: Config;
  log: Logger;
  /** the hypervisor (default: UnraidHypervisor on config.libvirt.uri) */
  hypervisor?: Hypervisor;
  /** the host key that signs probe modules (default: loadOrCreateHostKey()) */
  key?: HostKey;
  /** the file the config came from (the start line, status, and what SIGHUP reads again) */
  configPath?: string;
  /** keep the metrics even with metrics.listen off (benchmarks, tests reading metrics.text()) */
  metrics?: boolean;
}

export class Vesperd {
  readonly registry = new PluginRegistry();
  readonly filters = new FilterTable();
  readonly queue: EventQueue;
  readonly framework: NotificationFramework;
  readonly store: EventStore;
  readonly batcher: IngestBatcher;
  /** the export sinks (host/export/): read from the store after each commit */
  readonly exporter: Exporter;
  readonly table: VmTable;
  /** what the API answers with (the local socket and Pacemaker's alert socket) */
  readonly service: ApiService;
  /** paces the reads of every link under load (read-pacer.ts): this daemon's, not the process's */
  readonly pacer: ReadPacer;
  /** the links' acks, sent together (ack-coalescer.ts) */
  readonly acks = new AckCoalescer();
  /** libvirt, when there is a connection (optional: see libvirt-connection.ts) */
  private hv: Hypervisor | null = null;
  private libvirt: LibvirtConnection | null = null;
  /** other libvirts (failover standbys), connected once and kept */
  private readonly others = new Map<string, Promise<Hypervisor>>();
  private libvirtEvents: LibvirtEvents | null = null;
  private api: ApiServer | null = null;
  /** Pacemaker's alert agent's socket (HostEvent only), when the config has a pacemaker section */
  private alertApi: ApiServer | null = null;
  private actions: ActionRunner;
  private readonly pacemaker: PacemakerActions;
  private key: HostKey;
  /** this vesperd's hold on its store (none for an in-memory store) */
  private readonly lock: DaemonLock | null;
  private timers: NodeJS.Timeout[] = [];
  /** domains the host holds stopped (paused, saved, snapshotted, migrating): no liveness alarms */
  readonly pauses: HostPauses;
  private stopped = false;
  private readonly log: Logger;
  /** the Prometheus metrics, when metrics.listen is on (or asked for) */
  readonly metrics: Metrics | null;
  private readonly startedAt = Date.now();
  private configLoadedAt = Date.now();

  constructor(private readonly o: VesperdOptions) {
    const c = o.config;
    this.log = o.log;
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
    this.metrics =
      c.metrics.listen.kind !== 'off' || o.metrics
        ? new Metrics({
            links: () => this.linkReadings(),
            storeBytes: () => this.store.liveBytes(),
            storeLimitBytes: () => this.store.retentionNow().maxBytes ?? 0,
            sinks: () => this.exporter.states(),
            ingest: () => {
              const f = this.framework.counters();
              return {
                commits: this.batcher.commits,
                failures: this.batcher.failures,
                duplicates: f.duplicates,
                unregisteredPlugin: f.unregisteredPlugin,
              };
            },
          })
        : null;
    const pc = c.pacemaker;
    this.pacemaker = new PacemakerActions(
      pc
        ? { vms: pc.vms, node: pc.node, healthAttribute: pc.healthAttribute, toolsTimeoutMs: pc.toolsTimeout }
        : DEFAULT_PACEMAKER_SETTINGS,
      this.log,
    );
    this.actions = new ActionRunner({
      hypervisorFor: (uri?: string) => this.hypervisorFor(uri),
      standbyUri: c.actions.standbyUri,
      requireLockManager: c.actions.requireLockManager,
      lock: new FenceLock(c.actions.fenceLockDir),
      limiter: new ActionRateLimiter({ max: c.actions.rateLimit.max, windowMs: c.actions.rateLimit.per }),
      execTimeoutMs: c.actions.execTimeout,
      pacemaker: this.pacemaker,
      owner: `${hostname()}/${process.pid}`,
      log: this.log,
      onResult: (ev, r) => {
        this.metrics?.actionDone(r.action, r.ok, r.error?.code);
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
        });
      },
    });
    this.framework = new NotificationFramework({
      registry: this.registry,
      filters: this.filters,
      queue: this.queue,
      store: this.store,
      actions: { run: (ev, action, args) => this.actions.run(ev, action, args) },
      ...(this.metrics ? { tally: this.metrics.tally } : {}),
    });
    this.pacer = new ReadPacer(c.channel.readCoalesce);
    this.pauses = new HostPauses({
      link: (vm) => this.table.vms.get(vm)?.link ?? null,
      stateOf: (vm) => (this.hv ? this.hv.state(vm) : Promise.reject(new Error('no libvirt'))),
      hostEvent: (e) => this.hostEvent(e),
      log: this.log,
      graceMs: c.channel.resumeGrace ?? 10_000,
    });
    this.exporter = new Exporter(this.store, this.log, hostname());
    const framework = this.framework;
    const exporter = this.exporter;
    this.batcher = new IngestBatcher(
      {
        ingest(events) {
          const r = framework.ingest(events);
          if (r.stored > 0) exporter.wake();
          return r;
        },
        publishNow: () => framework.publishNow(),
      },
      undefined,
      this.pacer,
    );
    this.table = new VmTable({
      config: c,
      log: this.log,
      registry: this.registry,
      store: this.store,
      key: this.key,
      batcher: this.batcher,
      acks: this.acks,
      pacer: this.pacer,
      hostEvent: (e) => this.hostEvent(e),
      hypervisor: () => this.hv,
      domainState: (vm, state, askedAtMs) => this.pauses.reconcile(vm, state, askedAtMs),
      linkMade: (vm, link) => this.pauses.linkMade(vm, link),
      forgot: (vm) => this.pauses.forget(vm),
      ...(this.metrics ? { latency: this.metrics.latency } : {}),
    });
    this.service = new ApiService({
      config: c,
      log: this.log,
      vms: this.table,
      registry: this.registry,
      filters: this.filters,
      framework: this.framework,
      queue: this.queue,
      store: this.store,
      batcher: this.batcher,
      exporter: this.exporter,
      pacemaker: this.pacemaker,
      resourceVm: resourceIndex(pc?.vms ?? {}),
      daemon: () => this.status(),
    });
  }

  /** The VMs as the table holds them now. */
  get vms(): Map<string, VmEntry> {
    return this.table.vms;
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
    // Sinks before the links: a sink resumes from its cursor, so nothing is missed either way,
    // but a daemon that says it is up has its sinks running.
    await this.exporter.setSinks(buildSinks(c.sinks));
    await this.rescan();
    this.api = new ApiServer(this.service, { socket: c.daemon.socket, group: c.daemon.group, log: this.log });
    await this.api.listen();
    if (c.pacemaker) {
      // The host gets node, fencing and attribute alerts, and those of unmapped resources.
      this.registry.register(hostPluginSpec(PACEMAKER_PLUGIN, ''));
      this.alertApi = new ApiServer(this.service, {
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
    await this.metrics?.listen(c.metrics.listen);
    this.log.info(
      {
        version: VESPER_VERSION,
        config: this.o.configPath ?? null,
        vms: this.vms.size,
        store: c.store.path,
        metrics: this.metrics?.where || 'off',
      },
      `vesperd ${VESPER_VERSION} started (config ${this.o.configPath ?? 'built in'})`,
    );
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
    await this.metrics?.close();
    this.table.stop();
    this.acks.stop();
    this.batcher.flush();
    await this.libvirtEvents?.stop();
    // An action in flight (a failover waiting for its fence) gets a few seconds, not forever.
    await Promise.race([this.actions.idle(), new Promise((r) => setTimeout(r, 5000).unref())]);
    await this.libvirt?.stop(); // closes its connection, if it made one
    for (const h of this.others.values()) await h.then((x) => x.close()).catch(() => undefined);
    await this.exporter.close();
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

  /** Brings the VM table in line with libvirt: new domains, gone domains, channel paths. */
  rescan(): Promise<void> {
    return this.table.rescan();
  }

  private onLibvirt(e: LibvirtEvent): void {
    if (e.domain && !this.table.watches(e.domain)) return;
    const ev = eventOfLibvirt(e);
    if (ev) this.hostEvent(ev);
    // After the event itself, so that the timeline reads "suspended" then "watch-held".
    this.pauses.onEvent(e);
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
      const { deleted } = this.exporter.prune();
      this.metrics?.retentionDeletedAdd(deleted);
      if (deleted) this.log.info({ deleted }, 'retention: old events deleted');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'retention failed');
    }
  }

  /** Each link as the metrics read it. */
  private *linkReadings(): Iterable<LinkReading> {
    for (const v of this.table.vms.values()) {
      const l = v.link;
      if (!l) continue;
      const c = l.session.client;
      yield {
        vm: v.name,
        transport: l.spec.transport,
        up: l.state === 'connected',
        lostAgent: l.recordsLost,
        lostEndedRun: l.recordsLostEnded,
        throttles: c?.throttles ?? 0,
        throttledMs: c?.throttledMs ?? 0,
      };
    }
  }

  /** `vesper status` without a VM. */
  status(): apipb.IDaemonDetail {
    const c = this.o.config;
    const st = this.store.stats();
    let up = 0;
    for (const v of this.table.vms.values()) if (v.link?.state === 'connected') up++;
    return {
      version: VESPER_VERSION,
      pid: process.pid,
      uptimeS: (Date.now() - this.startedAt) / 1000,
      configPath: this.o.configPath ?? '',
      storePath: c.store.path,
      storeBytes: st.bytes,
      storeLimitBytes: c.store.retention.maxSize,
      storeEvents: st.events,
      metricsListen: this.metrics?.where || metricsListenText(c.metrics.listen),
      vms: this.table.vms.size,
      linksUp: up,
      sinks: this.service.sinkStates(),
      configLoadedAtMs: this.configLoadedAt,
    };
  }

  /**
   * A configuration reload (SIGHUP): the live settings of `next` (reload.ts) are taken now, the
   * others keep their values until a restart. No link is dropped, except that of a VM whose SSH
   * target changed (or went); a sink whose settings changed is restarted from its cursor (the
   * others keep running). Throws (and changes nothing) when the new sinks or retention are refused.
   */
  async reload(next: Config): Promise<ReloadPlan> {
    const c = this.o.config;
    const plan = planReload(c, next);
    const sinks = plan.applied.includes('sinks') ? buildSinks(next.sinks) : null;
    if (plan.applied.includes('store.retention'))
      this.store.setRetention({
        maxAgeMs: next.store.retention.maxAge,
        maxBytes: next.store.retention.maxSize,
        vmShare: next.store.retention.vmShare,
      });
    takeLiveSettings(c, next);
    this.log.level = c.daemon.logLevel;
    if (plan.applied.includes('filters')) {
      // the file's rules again, then those set at run time (stored) on top, as at start
      this.filters.clear();
      for (const f of c.filters) this.filters.set(f);
      for (const f of this.store.listFilters()) this.filters.set(f.decision as FilterRule);
    }
    if (plan.applied.includes('ssh')) void this.rescan();
    if (sinks) await this.exporter.setSinks(sinks);
    this.configLoadedAt = Date.now();
    return plan;
  }
}
