// The host-side plugins, as data: what the manager itself observes about each VM and feeds
// into the framework next to the guest's probes. The daemon registers libvirt and channel for
// every VM it manages (instance 0), wiring setParams to the code that does the work, and
// pacemaker where the config maps a VM to a Pacemaker resource.
import { HOST_PLUGIN } from '../../contract/names.js';
import type { PluginEvent, PluginParam, PluginSpec } from './registry.js';

export interface HostPluginDescription {
  readonly name: string;
  readonly description: string;
  readonly events: readonly PluginEvent[];
  readonly params: readonly PluginParam[];
}

/** libvirt's view of a domain (host/libvirt/events.ts), one event per lifecycle change. */
export const LIBVIRT_PLUGIN: HostPluginDescription = {
  name: HOST_PLUGIN.libvirt,
  description: 'the domain as libvirt sees it: lifecycle, guest panic (pvpanic), watchdog, I/O errors',
  events: [
    { name: 'started', description: 'the domain started (booted, restored, migrated in)' },
    { name: 'stopped', description: 'the domain stopped (destroyed, shut off, migrated away, failed)' },
    { name: 'crashed', description: 'the domain crashed (libvirt lifecycle Crashed)' },
    { name: 'panicked', description: 'the guest kernel panicked (pvpanic / guest panic notifier)' },
    { name: 'shutdown', description: 'the guest shut down on its own or on request' },
    { name: 'rebooted', description: 'the guest rebooted' },
    { name: 'watchdog', description: 'the emulated watchdog fired (payload: its action)' },
    { name: 'io-error', description: 'a disk I/O error (payload: device, action, reason)' },
    { name: 'suspended', description: 'the domain was paused (by an administrator, an I/O error, a watchdog)' },
    { name: 'resumed', description: 'the domain runs again after a pause' },
    { name: 'other', description: 'any other libvirt domain event, as libvirt named it' },
  ],
  params: [],
};

/** The host↔guest channel and the agent behind it (host/channel/guest-session.ts). */
export const CHANNEL_PLUGIN: HostPluginDescription = {
  name: HOST_PLUGIN.channel,
  description: 'the link to the guest agent: connection, heartbeat, records the agent had to drop',
  events: [
    { name: 'agent-connected', description: 'the agent answered for the first time (payload: hello)' },
    { name: 'agent-lost', description: 'the link to the agent broke; the guest may still be running' },
    { name: 'agent-back', description: 'the link came back (payload: whether the guest or agent restarted)' },
    { name: 'heartbeat-lost', description: 'no heartbeat for the set number of intervals' },
    { name: 'heartbeat-back', description: 'heartbeats arrive again (payload: how long they were silent)' },
    { name: 'records-lost', description: "the agent's ring overflowed; payload: how many records it dropped" },
    {
      name: 'agent-stopping',
      description:
        'the agent was told to stop (payload: signal, systemState: "stopping" when the guest shuts down); the silence after it is planned: no heartbeat-lost, no agent-lost',
    },
    {
      name: 'watch-held',
      description: 'the host stopped the guest (paused, saved, snapshotted, migrating): heartbeat-lost and agent-lost held (payload: why)',
    },
    {
      name: 'watch-resumed',
      description: 'the guest runs again: detection resumed (payload: why, heldMs, graceMs given to the first beat, linkDropped)',
    },
  ],
  params: [
    { name: 'heartbeat_misses', type: 'int', default: '3', description: 'heartbeat intervals without a beat before heartbeat-lost' },
    { name: 'keepalive', type: 'duration', default: '1000', description: 'how often the host pings the agent' },
    { name: 'reconnect_min', type: 'duration', default: '200', description: 'first delay before reconnecting' },
    { name: 'reconnect_max', type: 'duration', default: '5000', description: 'longest delay between reconnect attempts' },
  ],
};

/**
 * Pacemaker's alerts (host/pacemaker/alert-agent.sh → `vesper alert-pacemaker` → vesperd). Not
 * in HOST_PLUGINS: the daemon registers it only where the config maps a VM to a resource, and
 * for the host, which gets node, fencing and attribute alerts and those of unmapped resources.
 */
export const PACEMAKER_PLUGIN: HostPluginDescription = {
  name: HOST_PLUGIN.pacemaker,
  description: "Pacemaker's alerts: its operations on the VM's resource, node membership, fencing, node attributes",
  events: [
    {
      name: 'resource-failed',
      description: 'an operation on the resource failed or gave an unexpected result (payload: task, rc, status)',
    },
    { name: 'resource-started', description: 'Pacemaker started the resource (payload: node, execTime)' },
    { name: 'resource-stopped', description: 'Pacemaker stopped the resource' },
    {
      name: 'resource-op',
      description: 'any other operation result: monitor, promote, migrate, a cancelled operation (payload: task, rc)',
    },
    { name: 'node-lost', description: 'a cluster node left the membership (payload: node)' },
    { name: 'node-joined', description: 'a cluster node joined the membership (payload: node)' },
    { name: 'fencing', description: 'a fencing operation ended (payload: node, task, rc, desc)' },
    { name: 'attribute', description: 'a node attribute changed (payload: attributeName, attributeValue)' },
    { name: 'other', description: 'an alert of a kind vesper does not name (payload: the raw fields)' },
  ],
  params: [],
};

export const HOST_PLUGINS: readonly HostPluginDescription[] = [LIBVIRT_PLUGIN, CHANNEL_PLUGIN];

/** A registration for one host plugin on one VM ('' for the host itself). */
export function hostPluginSpec(plugin: HostPluginDescription, vm: string, setParams?: PluginSpec['setParams']): PluginSpec {
  return {
    vm,
    name: plugin.name,
    kind: 'host',
    events: plugin.events.map((e) => ({ ...e })),
    params: plugin.params.map((p) => ({ ...p })),
    instances: 1,
    ...(setParams ? { setParams } : {}),
  };
}
