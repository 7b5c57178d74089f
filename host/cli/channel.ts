// `vesper channel add VM` / `vesper channel remove VM`: the agent's virtio-serial channel
// (org.vesper.agent.0, a unix socket QEMU listens on) put into an existing libvirt domain or
// taken out of it, in the running guest (--live), the persistent definition (--config), or by
// default both where they exist. A domain without a virtio-serial controller gets one first.
// Idempotent: a channel already there (or already gone) is reported, not an error. Run from this
// process against libvirt, like virsh (vesperd notices the channel by itself).
import { Command, Option } from 'commander';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import {
  AGENT_CHANNEL,
  VIRTIO_SERIAL_CONTROLLER_XML,
  channelDeviceXml,
  channelDeviceXmlAutoPath,
  findChannel,
  hasVirtioSerialController,
} from '../libvirt/channel.js';
import type { DeviceChangeOptions } from '../libvirt/hypervisor.js';

/** What the verb needs from libvirt (UnraidHypervisor has it; unit tests pass a fake). */
export interface ChannelHypervisor {
  state(name: string): Promise<{ state: string; reason: string }>;
  /** the live XML while the domain runs */
  xml(name: string): Promise<string>;
  /** the persistent definition, null for a transient domain */
  inactiveXml(name: string): Promise<string | null>;
  attachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void>;
  detachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void>;
}

export type Scope = 'live' | 'config';

export interface ScopeResult {
  scope: Scope;
  /** added/removed: this call changed it; present/absent: it was so already */
  outcome: 'added' | 'present' | 'removed' | 'absent';
  /** a virtio-serial controller was added first (add only) */
  controllerAdded: boolean;
  /** the host-side socket (live scope, when libvirt reports it) */
  socket: string | null;
}

export interface ChannelOptions {
  live?: boolean;
  config?: boolean;
  channel?: string;
  /** how long a live detach may take to show in the XML (default 10 s) */
  detachTimeoutMs?: number;
}

const RUNNING = new Set(['running', 'paused', 'idle', 'pmsuspended', 'in shutdown']);

/** Which scopes to change: the flags given, or every scope the domain has (running → live, persistent → config). */
async function scopesOf(hv: ChannelHypervisor, vm: string, o: ChannelOptions): Promise<{ scopes: Scope[]; persistentXml: string | null }> {
  const running = RUNNING.has((await hv.state(vm)).state);
  const persistentXml = await hv.inactiveXml(vm);
  if (o.live && !running)
    throw new VesperError(
      ErrorCode.LIBVIRT_CALL,
      `${vm} is not running: --live changes a running domain (use --config for its definition)`,
    );
  if (o.config && persistentXml === null)
    throw new VesperError(ErrorCode.LIBVIRT_CALL, `${vm} is a transient domain: it has no persistent definition for --config to change`);
  const scopes: Scope[] = [];
  if (o.live || (!o.config && running)) scopes.push('live');
  if (o.config || (!o.live && persistentXml !== null)) scopes.push('config');
  return { scopes, persistentXml };
}

const flagsOf = (scope: Scope): DeviceChangeOptions => ({ live: scope === 'live', config: scope === 'config' });

async function xmlOf(hv: ChannelHypervisor, vm: string, scope: Scope): Promise<string> {
  if (scope === 'live') return hv.xml(vm);
  const x = await hv.inactiveXml(vm);
  if (x === null) throw new VesperError(ErrorCode.LIBVIRT_CALL, `${vm} lost its persistent definition meanwhile`);
  return x;
}

/** Adds the channel where it is missing. */
export async function addChannel(hv: ChannelHypervisor, vm: string, o: ChannelOptions = {}): Promise<ScopeResult[]> {
  const name = o.channel ?? AGENT_CHANNEL;
  const { scopes } = await scopesOf(hv, vm, o);
  const out: ScopeResult[] = [];
  for (const scope of scopes) {
    const before = await xmlOf(hv, vm, scope);
    const found = findChannel(before, name);
    if (found) {
      out.push({ scope, outcome: 'present', controllerAdded: false, socket: scope === 'live' ? found.path : null });
      continue;
    }
    let controllerAdded = false;
    if (!hasVirtioSerialController(before)) {
      await hv.attachDevice(vm, VIRTIO_SERIAL_CONTROLLER_XML, flagsOf(scope));
      controllerAdded = true;
    }
    await hv.attachDevice(vm, channelDeviceXmlAutoPath(name), flagsOf(scope));
    const after = findChannel(await xmlOf(hv, vm, scope), name);
    if (!after)
      throw new VesperError(
        ErrorCode.LIBVIRT_CALL,
        `libvirt accepted the channel ${name} for ${vm} (${scope}) but its XML does not show it`,
      );
    out.push({ scope, outcome: 'added', controllerAdded, socket: scope === 'live' ? after.path : null });
  }
  return out;
}

/** Removes the channel where it is; the controller stays (other channels may sit on it). */
export async function removeChannel(hv: ChannelHypervisor, vm: string, o: ChannelOptions = {}): Promise<ScopeResult[]> {
  const name = o.channel ?? AGENT_CHANNEL;
  const { scopes } = await scopesOf(hv, vm, o);
  const out: ScopeResult[] = [];
  for (const scope of scopes) {
    const found = findChannel(await xmlOf(hv, vm, scope), name);
    if (!found) {
      out.push({ scope, outcome: 'absent', controllerAdded: false, socket: null });
      continue;
    }
    // libvirt matches a channel to detach by its type, target and source: give the path it has.
    await hv.detachDevice(vm, found.path ? channelDeviceXml(found.path, name) : channelDeviceXmlAutoPath(name), flagsOf(scope));
    // A live unplug completes when QEMU says so (libvirt may return before): wait, bounded.
    const deadline = Date.now() + (o.detachTimeoutMs ?? 10_000);
    while (findChannel(await xmlOf(hv, vm, scope), name)) {
      if (Date.now() > deadline)
        throw new VesperError(ErrorCode.LIBVIRT_CALL, `${vm} still has the channel ${name} (${scope}) after the detach`);
      await new Promise((r) => setTimeout(r, 100));
    }
    out.push({ scope, outcome: 'removed', controllerAdded: false, socket: found.path });
  }
  return out;
}

const WHERE: Record<Scope, string> = { live: 'the running domain', config: 'the persistent definition' };

function report(vm: string, name: string, results: ScopeResult[], output: 'table' | 'json'): void {
  if (output === 'json') {
    process.stdout.write(`${JSON.stringify({ vm, channel: name, results })}\n`);
    return;
  }
  if (!results.length) process.stdout.write(`${vm}: nothing to change (not running and not persistent)\n`);
  for (const r of results) {
    const what = {
      added: `added to ${WHERE[r.scope]}`,
      present: `already in ${WHERE[r.scope]}`,
      removed: `removed from ${WHERE[r.scope]}`,
      absent: `not in ${WHERE[r.scope]}`,
    }[r.outcome];
    const extra = [
      r.controllerAdded ? 'with a new virtio-serial controller' : '',
      r.socket && r.outcome !== 'removed' ? `socket ${r.socket}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    process.stdout.write(`${vm}: ${name} ${what}${extra ? ` (${extra})` : ''}\n`);
  }
}

interface VerbFlags {
  live?: boolean;
  config?: boolean;
  connect?: string;
  vesperConfig?: string;
  output: 'table' | 'json';
}

async function run(vm: string, o: VerbFlags, verb: typeof addChannel): Promise<void> {
  const { loadConfig } = await import('../config/load.js');
  const { UnraidHypervisor } = await import('../libvirt/unraid.js');
  // --connect alone needs no config file; otherwise the config names the URI and the channel
  const cfg = o.connect && !o.vesperConfig ? null : loadConfig(o.vesperConfig);
  const name = cfg?.libvirt.channel ?? AGENT_CHANNEL;
  const hv = new UnraidHypervisor({ uri: o.connect ?? cfg?.libvirt.uri ?? 'qemu:///system' });
  try {
    report(vm, name, await verb(hv, vm, { live: o.live, config: o.config, channel: name }), o.output);
  } finally {
    await hv.close();
  }
}

/** Registers `vesper channel add|remove`. */
export function addChannelCommands(program: Command): void {
  const channel = program
    .command('channel')
    .description("the agent's virtio-serial channel in a libvirt domain (like virsh attach-device)");
  const common = (c: Command): Command =>
    c
      .argument('<vm>', 'libvirt domain name')
      .option('--live', 'change the running domain')
      .option('--config', 'change the persistent definition (next start)')
      .option('--connect <uri>', 'libvirt URI (default: libvirt.uri of the vesper config, qemu:///system)')
      .option('--vesper-config <file>', 'vesper YAML config for the URI and channel name (default /etc/vesper/vesper.yaml if it exists)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'));
  common(channel.command('add'))
    .description('add the channel (and a virtio-serial controller if none); default: live if running, and config if persistent')
    .action((vm: string, o: VerbFlags) => run(vm, o, addChannel));
  common(channel.command('remove'))
    .description('remove the channel; the controller stays')
    .action((vm: string, o: VerbFlags) => run(vm, o, removeChannel));
}
