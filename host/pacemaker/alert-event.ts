// Pacemaker's alerts as events of the `pacemaker` host plugin.
//
// Pacemaker runs an alert agent for every resource operation result, node membership change,
// fencing result and node attribute change, with the alert in CRM_alert_* environment
// variables. vesper's agent (host/pacemaker/alert-agent.sh) runs `vesper alert-pacemaker`,
// which turns that environment into an event name and a payload here (alertEvent) and sends
// them to vesperd (a HostEvent request); vesperd puts the event on a VM (eventOfHostRequest):
// a resource's alerts on the VM the config maps to that resource, everything else — node,
// fencing and attribute alerts, resources no VM is mapped to — on the host (vm '').
//
// The payload holds every non-empty CRM_alert_<name> variable as <name> in camelCase
// (CRM_alert_target_rc → targetRc), integers as numbers, and pacemakerTimeUs: Pacemaker's own
// time of the alert (CRM_alert_timestamp_epoch and _usec) in µs since the epoch, taken before
// it ran the agent, so the time Pacemaker acted is known exactly however late the event came.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from '../notify/event.js';
import { isVmName } from '../../contract/names.js';
import { PACEMAKER_PLUGIN } from '../notify/host-plugins.js';

export type AlertEnv = Readonly<Record<string, string | undefined>>;

/** Where the agent reports by default (config pacemaker.alert_socket). */
export const DEFAULT_ALERT_SOCKET = '/run/vesper-pacemaker/alert.sock';

export interface AlertEvent {
  event: string;
  payload: Record<string, unknown>;
}

const PREFIX = 'CRM_alert_';
/** The variables that hold integers (interval and exec_time in ms, the rest counts and codes). */
const INTEGER_FIELDS = new Set([
  'nodeid',
  'interval',
  'rc',
  'status',
  'target_rc',
  'exec_time',
  'node_sequence',
  'timestamp_epoch',
  'timestamp_usec',
]);
const MAX_FIELDS = 64;
const MAX_VALUE_CHARS = 4096;
/** A HostEvent's payload beyond this is refused. */
export const MAX_HOST_PAYLOAD_CHARS = 64 * 1024;

// Pacemaker's execution statuses (enum pcmk_exec_status) and OCF results that matter here.
const EXEC_PENDING = -1;
const EXEC_DONE = 0;
const EXEC_CANCELLED = 1;
const OCF_SUCCESS = 0;
const OCF_NOT_RUNNING = 7;
const OCF_RUNNING_PROMOTED = 8;

const EVENT_NAMES = new Set(PACEMAKER_PLUGIN.events.map((e) => e.name));

/** The event for one alert, from the agent's environment; VSP_USAGE when it holds no alert. */
export function alertEvent(env: AlertEnv): AlertEvent {
  const payload: Record<string, unknown> = {};
  let fields = 0;
  for (const key of Object.keys(env).sort()) {
    if (!key.startsWith(PREFIX)) continue; // CRM_notify_* are the same values under their old names
    const raw = env[key];
    if (raw === undefined || raw === '') continue;
    if (++fields > MAX_FIELDS) break;
    const name = key.slice(PREFIX.length);
    const value = raw.length > MAX_VALUE_CHARS ? raw.slice(0, MAX_VALUE_CHARS) : raw;
    payload[camel(name)] = INTEGER_FIELDS.has(name) && /^-?\d{1,15}$/.test(value) ? Number(value) : value;
  }
  const kind = payload['kind'];
  if (typeof kind !== 'string')
    throw new VesperError(
      ErrorCode.USAGE,
      'no Pacemaker alert in the environment (CRM_alert_kind is not set): this is run by Pacemaker as an alert agent',
    );
  const epoch = payload['timestampEpoch'];
  const usec = payload['timestampUsec'];
  payload['pacemakerTimeUs'] = typeof epoch === 'number' ? epoch * 1_000_000 + (typeof usec === 'number' ? usec : 0) : null;
  return { event: alertEventName(payload), payload };
}

/** The event name for an alert's payload (see PACEMAKER_PLUGIN for the list). */
export function alertEventName(p: Readonly<Record<string, unknown>>): string {
  switch (p['kind']) {
    case 'resource':
      return resourceEventName(p);
    case 'node':
      return p['desc'] === 'member' ? 'node-joined' : p['desc'] === 'lost' ? 'node-lost' : 'other';
    case 'fencing':
      return 'fencing';
    case 'attribute':
      return 'attribute';
    default:
      return 'other';
  }
}

function resourceEventName(p: Readonly<Record<string, unknown>>): string {
  const num = (k: string): number | undefined => (typeof p[k] === 'number' ? p[k] : undefined);
  const status = num('status');
  const rc = num('rc');
  const target = num('targetRc');
  const task = p['task'];
  // A recurring monitor cancelled by a stop, an operation still in flight: not results.
  if (status === EXEC_CANCELLED || status === EXEC_PENDING) return 'resource-op';
  if (status !== undefined && status !== EXEC_DONE) return 'resource-failed'; // timed out, could not run, ...
  if (rc !== undefined && target !== undefined && rc !== target) {
    // A probe (a one-off monitor) finding the resource running or stopped where Pacemaker
    // expected otherwise is news about its state, not a failure; any other result is one.
    const probe = task === 'monitor' && num('interval') === 0;
    if (probe && (rc === OCF_SUCCESS || rc === OCF_NOT_RUNNING || rc === OCF_RUNNING_PROMOTED)) return 'resource-op';
    return 'resource-failed';
  }
  if (task === 'start') return 'resource-started';
  if (task === 'stop') return 'resource-stopped';
  return 'resource-op';
}

function camel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

/** Resource → VM, from the config's VM → resource mapping. */
export function resourceIndex(vms: Readonly<Record<string, { resource: string }>>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [vm, m] of Object.entries(vms)) out.set(m.resource, vm);
  return out;
}

/** The VM a resource's alerts belong to: its mapping, also for a clone's instance (vm-web1:0). */
export function vmOfResource(index: ReadonlyMap<string, string>, rsc: string): string | undefined {
  return index.get(rsc) ?? index.get(rsc.replace(/:\d+$/, ''));
}

export interface HostEventRequest {
  plugin?: string | null;
  vm?: string | null;
  event?: string | null;
  payloadJson?: string | null;
}

/**
 * A HostEvent request as the event vesperd stores: the plugin and event checked against the
 * plugin's list, the payload a JSON object, the VM the request's or, when it gives none, the
 * one mapped to the alert's resource (else the host). VSP_USAGE for anything wrong.
 */
export function eventOfHostRequest(w: HostEventRequest, index: ReadonlyMap<string, string>, hostTimeUs: number): VesperEvent {
  const plugin = w.plugin ?? '';
  if (plugin !== PACEMAKER_PLUGIN.name)
    throw new VesperError(
      ErrorCode.USAGE,
      `host events are taken for the ${PACEMAKER_PLUGIN.name} plugin only, not ${JSON.stringify(plugin)}`,
    );
  const event = w.event ?? '';
  if (!EVENT_NAMES.has(event))
    throw new VesperError(ErrorCode.USAGE, `${plugin} has no event ${JSON.stringify(event)} (its events: ${[...EVENT_NAMES].join(', ')})`);
  const json = w.payloadJson || '{}';
  if (json.length > MAX_HOST_PAYLOAD_CHARS)
    throw new VesperError(ErrorCode.USAGE, `the payload is over ${MAX_HOST_PAYLOAD_CHARS} characters`);
  let payload: unknown;
  try {
    payload = JSON.parse(json);
  } catch (err) {
    throw new VesperError(ErrorCode.USAGE, `the payload is not JSON: ${(err as Error).message}`);
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload))
    throw new VesperError(ErrorCode.USAGE, 'the payload must be a JSON object');
  const p = payload as Record<string, unknown>;
  let vm = w.vm ?? '';
  if (vm !== '' && !isVmName(vm)) throw new VesperError(ErrorCode.USAGE, `${JSON.stringify(vm)} is not a VM name`);
  if (vm === '' && p['kind'] === 'resource' && typeof p['rsc'] === 'string') vm = vmOfResource(index, p['rsc']) ?? '';
  return { vm, plugin, instance: 0, event, guestTimeUs: null, hostTimeUs, source: null, payload: p };
}
