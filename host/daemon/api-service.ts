// The API service: what `vesper` asks vesperd (through ApiServer, which depends only on the
// DaemonApi interface), answered from the VM table, the store, the filter table and the
// notification framework. Attachments and filters set here are remembered in the store.
import type { Logger } from 'pino';
import { API_MAX_FRAME_BYTES, type apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { PacemakerActions } from '../actions/pacemaker.js';
import { actionProblemForVm, parseAction } from '../actions/parse.js';
import { analysisJson, analyzeFromStore } from '../analysis/analyze.js';
import type { AttachedProbe } from '../channel/guest-session.js';
import type { Config } from '../config/schema.js';
import { AGENT_CHANNEL } from '../libvirt/channel.js';
import type { VesperEvent } from '../notify/event.js';
import type { FilterRule, FilterTable } from '../notify/filter.js';
import type { NotificationFramework } from '../notify/framework.js';
import { HOST_PLUGINS, PACEMAKER_PLUGIN } from '../notify/host-plugins.js';
import type { EventQueue } from '../notify/queue.js';
import type { PluginRegistry } from '../notify/registry.js';
import { eventOfHostRequest } from '../pacemaker/alert-event.js';
import { probeNames, readProbeBundle } from '../probes/package.js';
import type { EventStore } from '../store/event-store.js';
import type { EventQuery } from '../store/event-query.js';
import { checkFilterKey, checkProbeParamValue, notPushedReason, type KnownPlugin } from './api-checks.js';
import type { DaemonApi, EventFeed } from './api-server.js';
import type { IngestBatcher } from './ingest.js';
import type { Exporter } from '../export/exporter.js';
import { existsSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import type { VmEntry, VmTable } from './vm-table.js';

export interface ApiServiceDeps {
  config: Config;
  log: Logger;
  vms: VmTable;
  registry: PluginRegistry;
  filters: FilterTable;
  framework: NotificationFramework;
  queue: EventQueue;
  store: EventStore;
  batcher: IngestBatcher;
  /** the export sinks, when the daemon runs them */
  exporter?: Exporter;
  /** which VMs Pacemaker manages (an action filter on another is refused) */
  pacemaker: PacemakerActions;
  /** Pacemaker resource → VM, for alerts */
  resourceVm: Map<string, string>;
  /** the daemon's own status (`vesper status` without a VM) */
  daemon?: () => apipb.IDaemonDetail;
}

export class ApiService implements DaemonApi {
  private readonly registry: PluginRegistry;
  private readonly filters: FilterTable;
  private readonly framework: NotificationFramework;
  private readonly queue: EventQueue;
  private readonly store: EventStore;
  private readonly batcher: IngestBatcher;
  private readonly log: Logger;

  constructor(private readonly d: ApiServiceDeps) {
    this.registry = d.registry;
    this.filters = d.filters;
    this.framework = d.framework;
    this.queue = d.queue;
    this.store = d.store;
    this.batcher = d.batcher;
    this.log = d.log;
  }

  async listVms(): Promise<apipb.IVmSummary[]> {
    await this.d.vms.rescan();
    return [...this.d.vms.vms.values()].sort((a, b) => a.name.localeCompare(b.name)).map((v) => this.summary(v));
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
    await this.d.vms.rescan();
    const v = this.d.vms.get(vm);
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
      agentTrust: v.link?.agentTrust() ?? '',
      attached: this.store.listAttachments(vm).map((a) => ({
        name: a.probe,
        instances: a.instances,
        params: a.params,
        loaded: loaded.has(a.probe),
        warnings: v.link?.warningsOf(a.probe) ?? [],
      })),
      // What the agent found missing at its start (its hello), said rather than ignored.
      kernelLacks: (hello?.capabilities?.missing ?? []).slice(0, 16).map((m) => String(m).slice(0, 512)),
    };
  }

  daemonStatus(): apipb.IDaemonDetail {
    if (!this.d.daemon) throw new VesperError(ErrorCode.USAGE, 'this API has no daemon status');
    this.batcher.flush();
    return this.d.daemon();
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
    const v = this.d.vms.get(vm);
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
      this.d.vms.registerProbe(v, name, n);
      out.push({
        name,
        instances: n,
        params: mine,
        loaded: v.link?.loadedNow().has(name) ?? false,
        warnings: v.link?.warningsOf(name) ?? [],
        pending: v.link ? '' : notPushedReason(vm, v.state, this.d.config.libvirt.channel ?? AGENT_CHANNEL),
      });
    }
    return out;
  }

  /** Detaching what is not attached is not an error (as `agent uninstall`): returns those names. */
  async detach(vm: string, probes: string[]): Promise<string[]> {
    const v = this.d.vms.get(vm);
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
    this.d.vms.get(vm);
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
    this.d.vms.get(vm);
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
      const problem = actionProblemForVm(parsed, rule.vm, (vm) => this.d.pacemaker.resourceOf(vm) !== undefined);
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
    const ev = eventOfHostRequest(w, this.d.resourceVm, Date.now() * 1000);
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
  sinkStates(): apipb.ISinkState[] {
    return (this.d.exporter?.states() ?? []).map((s) => ({
      name: s.name,
      kind: s.kind,
      cursor: s.cursor,
      backlog: s.backlog,
      delivered: s.delivered,
      failures: s.failures,
      lost: s.lost,
      lastError: s.lastError ?? '',
      lastErrorAtMs: s.lastErrorAtMs ?? 0,
      lastDeliveredAtMs: s.lastDeliveredAtMs ?? 0,
      status: s.status,
    }));
  }

  async storeBackup(path: string): Promise<string> {
    if (!isAbsolute(path)) throw new VesperError(ErrorCode.USAGE, `store backup: ${path} is not an absolute path`);
    if (existsSync(path)) throw new VesperError(ErrorCode.USAGE, `store backup: ${path} exists; give a new file`);
    this.batcher.flush(); // what was received before the request is in the copy
    const before = this.store.lastId();
    const started = Date.now();
    const { totalPages } = await this.store.backup(path);
    this.log.info({ path, pages: totalPages, lastId: before, ms: Date.now() - started }, 'store backed up');
    return `backed up ${this.store.path} to ${path} (${totalPages} pages; every event up to id ${before})`;
  }

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
      if (a.eventCount === 0 && !this.d.vms.vms.has(vm) && this.store.vmStats(vm).events === 0) throw unknownVm(vm);
      // Room for the frame's own fields next to the text.
      return analysisJson(a, API_MAX_FRAME_BYTES - 64 * 1024);
    } catch (err) {
      if (
        err instanceof VesperError &&
        err.code === ErrorCode.ANALYSIS_NO_FAILURE &&
        !this.d.vms.vms.has(vm) &&
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
