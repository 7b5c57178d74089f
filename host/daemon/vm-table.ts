// The VM table: every VM vesperd watches, and its link. It is filled from libvirt's domains
// (those libvirt.domains matches) and the config's ssh.targets, and kept in line by rescan():
// a domain that has the vesper channel is reached over it (its SSH entry unused, said once in
// the log); one without it, or not running here, over SSH. The link follows the domain: a channel
// hot-plugged later takes over from SSH. Each VM's host plugins and attached probes are
// registered with the framework while the VM is in the table.
import type { Logger } from 'pino';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Config } from '../config/schema.js';
import type { ReadPacer } from '../channel/read-pacer.js';
import type { HostKey } from '../keys.js';
import type { LatencyHistogram } from '../metrics/latency.js';
import { channelSocketPath, AGENT_CHANNEL } from '../libvirt/channel.js';
import type { DomainInfo, Hypervisor } from '../libvirt/hypervisor.js';
import type { VesperEvent } from '../notify/event.js';
import { HOST_PLUGINS, PACEMAKER_PLUGIN, hostPluginSpec } from '../notify/host-plugins.js';
import { paramTypeOfManifest } from '../notify/params.js';
import type { PluginRegistry } from '../notify/registry.js';
import { readProbeBundle } from '../probes/package.js';
import type { EventStore } from '../store/event-store.js';
import type { AckCoalescer } from './ack-coalescer.js';
import { GuestLink, unixLink, type LinkSpec } from './guest-link.js';
import type { IngestBatcher } from './ingest.js';
import { sshLink } from './ssh-link.js';

/** libvirt has no domain of this name: an SSH target only */
const EXTERNAL = 'external';

export interface VmEntry {
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

export interface VmTableDeps {
  config: Config;
  log: Logger;
  registry: PluginRegistry;
  store: EventStore;
  /** signs the probe modules pushed to the agents */
  key: HostKey;
  batcher: IngestBatcher;
  /** the daemon's ack coalescer and read pacer, shared by every link */
  acks: AckCoalescer;
  pacer: ReadPacer;
  /** host-side events (the channel plugin) */
  hostEvent: (ev: VesperEvent) => void;
  /** libvirt, when there is a connection; without it only SSH targets are VMs */
  hypervisor: () => Hypervisor | null;
  /** told of each libvirt domain's state as listed (asked for at askedAtMs), of each new link, of each VM forgotten */
  domainState?: (vm: string, state: string, askedAtMs: number) => void;
  linkMade?: (vm: string, link: GuestLink) => void;
  forgot?: (vm: string) => void;
  /** detection latency by plugin (the metrics'), when metrics are on */
  latency?: LatencyHistogram;
}

export class VmTable {
  readonly vms = new Map<string, VmEntry>();
  /** libvirt.domains as one regular expression */
  private readonly domainFilter: RegExp;
  private scanning: Promise<void> | null = null;
  private stopped = false;
  private readonly log: Logger;

  constructor(private readonly d: VmTableDeps) {
    this.log = d.log;
    this.domainFilter = globsToRegExp(d.config.libvirt.domains ?? ['*']);
  }

  /** Every link stopped; no rescan after this. */
  stop(): void {
    this.stopped = true;
    for (const v of this.vms.values()) v.link?.stop();
  }

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
    const askedAtMs = Date.now();
    try {
      // without libvirt (not there, or not yet), no domain is known: SSH targets only
      const hv = this.d.hypervisor();
      doms = hv ? await hv.listDomains() : [];
    } catch (err) {
      libvirtErr = err as Error; // SSH targets are still brought up; libvirt's VMs stay as they were
    }
    const seen = new Set<string>();
    for (const d of doms ?? []) {
      if (!this.watches(d.name)) continue; // another vesperd's, or the operator left it out
      seen.add(d.name);
      this.d.domainState?.(d.name, d.state, askedAtMs);
      await this.refreshVm(d);
    }
    // SSH targets libvirt does not have (or no longer has) are VMs of their own.
    for (const name of Object.keys(this.d.config.ssh.targets))
      if (!seen.has(name) && (doms || !this.vms.has(name))) {
        seen.add(name);
        await this.refreshVm({ name, state: EXTERNAL });
      }
    if (libvirtErr) throw libvirtErr;
    for (const name of [...this.vms.keys()]) if (!seen.has(name)) this.forgetVm(name);
  }

  private async refreshVm(d: Pick<DomainInfo, 'name'> & { state: string }): Promise<void> {
    let v = this.vms.get(d.name);
    const sshTarget = this.d.config.ssh.targets[d.name];
    if (v && (v.state === EXTERNAL) !== (d.state === EXTERNAL)) {
      // An SSH target that became a libvirt domain (or stopped being one): the libvirt plugin
      // comes or goes; the link is decided below.
      const h = v.handles.get('libvirt');
      if (h !== undefined) {
        this.d.registry.unregister(h);
        v.handles.delete('libvirt');
      } else {
        const p = HOST_PLUGINS.find((x) => x.name === 'libvirt')!;
        v.handles.set(p.name, this.d.registry.register(hostPluginSpec(p, d.name)));
      }
    }
    if (!v) {
      v = { name: d.name, state: d.state, socket: null, link: null, ssh: sshTarget?.target ?? null, handles: new Map() };
      this.vms.set(d.name, v);
      for (const p of HOST_PLUGINS)
        if (p.name !== 'libvirt' || d.state !== EXTERNAL)
          v.handles.set(
            p.name,
            this.d.registry.register(
              hostPluginSpec(
                this.inEffect(p),
                d.name,
                p.params.length
                  ? () => Promise.reject(new VesperError(ErrorCode.USAGE, `${p.name} parameters are set in the config file (channel: ...)`))
                  : undefined,
              ),
            ),
          );
      if (this.d.config.pacemaker && Object.hasOwn(this.d.config.pacemaker.vms, d.name))
        v.handles.set(PACEMAKER_PLUGIN.name, this.d.registry.register(hostPluginSpec(PACEMAKER_PLUGIN, d.name)));
    }
    v.state = d.state;
    const running = d.state === 'running' || d.state === 'paused' || d.state === 'idle';
    let socket: string | null = null;
    if (running && d.state !== EXTERNAL) {
      try {
        const hv = this.d.hypervisor();
        if (hv) socket = channelSocketPath(await hv.xml(d.name), this.d.config.libvirt.channel ?? AGENT_CHANNEL);
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
    v.ssh = sshTarget?.target ?? null; // a reload may have changed it: the link follows below
    if (want?.transport !== have?.transport || want?.where !== have?.where) {
      v.link?.stop();
      v.link = null;
      if (want) {
        v.link = this.newLink(
          d.name,
          want.transport === 'virtio' ? unixLink(want.where, this.d.pacer) : sshLink(sshTarget!, this.d.config.ssh),
        );
        this.d.linkMade?.(d.name, v.link);
        v.link.start();
        if (want.transport === 'ssh') this.log.info({ vm: d.name, target: want.where }, 'reaching the agent over SSH');
      }
    }
    this.ensureAttachments(v);
  }

  private newLink(vm: string, spec: LinkSpec): GuestLink {
    const c = this.d.config.channel;
    return new GuestLink(vm, spec, {
      key: this.d.key,
      batcher: this.d.batcher,
      heldFor: (name, run) => this.d.store.highestSeq(name, run),
      hostEvent: this.d.hostEvent,
      acks: this.d.acks,
      pacer: this.d.pacer,
      log: this.log,
      keepaliveMs: c.keepalive,
      minBackoffMs: c.reconnectMin,
      maxBackoffMs: c.reconnectMax,
      budget: { recordsPerS: c.ingest.recordsPerS, bytesPerS: c.ingest.bytesPerS, burstMs: c.ingest.burst },
      ...(this.d.latency ? { latency: this.d.latency } : {}),
    });
  }

  /** Stored attachments (and the config's attach rules for a VM seen the first time) onto the link. */
  private ensureAttachments(v: VmEntry): void {
    let stored = this.d.store.listAttachments(v.name);
    if (!stored.length && !this.d.store.getMeta(`seen:${v.name}`)) {
      for (const rule of this.d.config.attach)
        if (rule.vm === '*' || rule.vm === v.name)
          for (const p of rule.probes) this.d.store.saveAttachment(v.name, p.name, { instances: p.instances ?? 1, params: p.params ?? {} });
      this.d.store.setMeta(`seen:${v.name}`, String(Date.now()));
      stored = this.d.store.listAttachments(v.name);
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
    for (const h of v.handles.values()) this.d.registry.unregister(h);
    this.vms.delete(name);
    this.d.forgot?.(name);
  }

  /** A host plugin with the values the config sets shown as its defaults (`param get VM channel`). */
  private inEffect(p: (typeof HOST_PLUGINS)[number]): (typeof HOST_PLUGINS)[number] {
    if (p.name !== 'channel') return p;
    const c = this.d.config.channel;
    const now: Record<string, number> = { keepalive: c.keepalive, reconnect_min: c.reconnectMin, reconnect_max: c.reconnectMax };
    return { ...p, params: p.params.map((x) => (now[x.name] !== undefined ? { ...x, default: String(now[x.name]) } : x)) };
  }

  /** Registers an attached probe's plugin for the VM (once; the caller unregisters a changed one). */
  registerProbe(v: VmEntry, probe: string, instances: number): void {
    if (v.handles.has(probe)) return;
    const m = readProbeBundle(probe).manifest;
    const handle = this.d.registry.register({
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
        const a = this.d.store.listAttachments(v.name).find((x) => x.probe === probe);
        if (a && instance === null)
          this.d.store.saveAttachment(v.name, probe, { instances: a.instances, params: { ...a.params, ...params } });
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

  /** libvirt.domains: the domains this vesperd watches (globs). */
  watches(domain: string): boolean {
    return this.domainFilter.test(domain);
  }

  /** The VM of that name, or VSP_VM_NOT_FOUND. */
  get(vm: string): VmEntry {
    const v = this.vms.get(vm);
    if (!v)
      throw new VesperError(
        ErrorCode.VM_NOT_FOUND,
        `no VM named ${vm} (vesper list shows the VMs libvirt has and the config's ssh.targets)`,
      );
    return v;
  }
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
