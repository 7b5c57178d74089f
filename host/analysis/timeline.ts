// One failure window as one ordered timeline on the host's clock.
//
// Host events (libvirt, channel, pacemaker, action) carry the host's time already. Guest
// records carry the guest's wall clock, which may be off by seconds and drifts, and the host
// time vesperd received them at, which includes transit and batching (and, for a record the
// agent resent after a reconnect, the whole outage). Per agent run, the smallest
// hostTimeUs − guestTimeUs over its records is the clock offset plus the shortest transit seen:
// the record that waited least. Adding it to a guest time gives a host time that is never
// earlier than the event and late by at most that shortest transit (milliseconds on a live
// link), while the guest's own times keep their order and spacing within the run.
import { SIGNALS, SI_KERNEL } from '../../contract/signals.js';
import type { VesperEvent } from '../notify/event.js';
import { num, obj, str, type Obj } from './payload.js';
import type { ClockReconciliation, ClockRun, TimelineEntry } from './types.js';

/** An event of the window placed on the host clock; the payload is not touched (not decoded). */
export interface Placed {
  ev: VesperEvent;
  id: number;
  timeUs: number;
  clock: 'guest' | 'host';
}

const SIGNAL_NAMES: Record<number, string> = Object.fromEntries(Object.entries(SIGNALS).map(([n, v]) => [v, `SIG${n}`]));

export function signalName(sig: number): string {
  return SIGNAL_NAMES[sig] ?? (sig >= 34 && sig <= 64 ? `SIGRTMIN+${sig - 34}` : `signal ${sig}`);
}

export const CLOCK_NOTE =
  "Host events are on the host clock as stored. Each guest record is put on the host clock with its agent run's offset: " +
  "the smallest (host receive time − guest wall time) over the run's records in the window, which is the guest clock's " +
  'offset plus the shortest transit seen. Guest events may therefore show late by up to that transit (typically a few ms), ' +
  "never early; their order within a run is the guest's own.";

/** Offsets per agent run from the window's guest records (records without a guest time are skipped). */
export function reconcileClocks(events: readonly VesperEvent[]): { clocks: ClockReconciliation; offsets: Map<string, number> } {
  const runs = new Map<string, { min: number; max: number; n: number; first: number; last: number }>();
  for (const e of events) {
    const run = e.source?.agentRun;
    if (run === undefined || e.guestTimeUs === null || e.guestTimeUs === 0) continue;
    const d = e.hostTimeUs - e.guestTimeUs;
    const r = runs.get(run);
    if (r === undefined) runs.set(run, { min: d, max: d, n: 1, first: e.guestTimeUs, last: e.guestTimeUs });
    else {
      if (d < r.min) r.min = d;
      if (d > r.max) r.max = d;
      r.n++;
      if (e.guestTimeUs < r.first) r.first = e.guestTimeUs;
      if (e.guestTimeUs > r.last) r.last = e.guestTimeUs;
    }
  }
  const offsets = new Map<string, number>();
  const out: ClockRun[] = [];
  for (const [agentRun, r] of runs) {
    offsets.set(agentRun, r.min);
    out.push({ agentRun, offsetUs: r.min, records: r.n, spreadUs: r.max - r.min, firstUs: r.first + r.min, lastUs: r.last + r.min });
  }
  out.sort((a, b) => a.firstUs - b.firstUs);
  return { clocks: { method: 'min-transit', note: CLOCK_NOTE, runs: out }, offsets };
}

/** Every event on the host clock, ordered by that time (then by id: the store's order). */
export function placeEvents(events: readonly VesperEvent[], offsets: ReadonlyMap<string, number>): Placed[] {
  const placed: Placed[] = new Array<Placed>(events.length);
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as VesperEvent;
    const off = ev.source ? offsets.get(ev.source.agentRun) : undefined;
    const guest = off !== undefined && ev.guestTimeUs !== null && ev.guestTimeUs !== 0;
    placed[i] = { ev, id: ev.id ?? 0, timeUs: guest ? (ev.guestTimeUs as number) + off : ev.hostTimeUs, clock: guest ? 'guest' : 'host' };
  }
  placed.sort((a, b) => a.timeUs - b.timeUs || a.id - b.id);
  return placed;
}

export function entryOf(p: Placed): TimelineEntry {
  const e = p.ev;
  return {
    id: p.id,
    timeUs: p.timeUs,
    guestTimeUs: e.guestTimeUs,
    hostTimeUs: e.hostTimeUs,
    clock: p.clock,
    agentRun: e.source?.agentRun ?? null,
    plugin: e.plugin,
    instance: e.instance,
    event: e.event,
    description: describe(e),
    payload: e.payload,
  };
}

// ------------------------------------------------------------------ descriptions

export function task(t: unknown): string {
  const o = obj(t);
  const pid = num(o['pid']);
  const comm = str(o['comm']);
  if (pid === undefined) return comm || 'an unknown task';
  return comm ? `${pid} (${comm})` : String(pid);
}

function kib(v: unknown): string {
  const k = num(v) ?? 0;
  return k >= 10 * 1024 ? `${Math.round(k / 1024)} MiB` : `${k} KiB`;
}

function seconds(ms: unknown): string {
  const v = num(ms);
  return v === undefined ? '?' : `${(v / 1000).toFixed(v < 10_000 ? 1 : 0)} s`;
}

const SIGNAL_RESULTS = ['delivered', 'ignored', 'already pending', 'queue overflow', 'info lost'];

/** The signal payload's fields, or null when the payload is not a signal. */
export function signalOf(e: VesperEvent): {
  sig: number;
  code: number;
  result: number;
  target: Obj;
  sender: Obj;
  senderIsKernel: boolean;
} | null {
  if (e.plugin !== 'signal') return null;
  const s = obj(e.payload['signal']);
  const sig = num(s['sig']);
  if (sig === undefined) return null;
  return {
    sig,
    code: num(s['code']) ?? 0,
    result: num(s['result']) ?? 0,
    target: obj(s['target']),
    sender: obj(s['sender']),
    senderIsKernel: s['senderIsKernel'] === true,
  };
}

/** A systemd unit named in a cgroup path: its last component that is a service or a scope. */
export function unitOfCgroup(cgroup: string): string {
  const parts = cgroup.split('/').filter(Boolean);
  for (let i = parts.length - 1; i >= 0; i--) if (/\.(service|scope)$/.test(parts[i]!)) return parts[i]!;
  return '';
}

function describeSignal(e: VesperEvent): string {
  const s = signalOf(e);
  if (!s) return 'signal (no payload)';
  const from = s.senderIsKernel
    ? `from the kernel (${s.code > 0 && s.code < SI_KERNEL ? `fault in ${task(s.sender)}, code ${s.code}` : `code ${s.code}`})`
    : num(s.sender['pid']) === num(s.target['pid'])
      ? 'from itself'
      : `from ${task(s.sender)}${senderOrigin(e)}`;
  const result = s.result !== 0 ? ` (${SIGNAL_RESULTS[s.result] ?? `result ${s.result}`})` : '';
  const unit = unitOfCgroup(str(obj(e.payload['signal'])['targetCgroup']));
  return `${signalName(s.sig)} to ${task(s.target)}${unit ? ` [${unit}]` : ''} ${from}${result}`;
}

/** The sending process's parent, cgroup and unit, as the signal probe read them (null when unknown). */
export function senderOriginOf(e: VesperEvent): { parent: Obj | null; cgroup: string | null; unit: string | null } {
  const s = obj(e.payload['signal']);
  const parent = obj(s['senderParent']);
  const cgroup = str(s['senderCgroup']);
  return { parent: num(parent['pid']) !== undefined ? parent : null, cgroup: cgroup || null, unit: unitOfCgroup(cgroup) || null };
}

/** ", child of 700 (bash), unit x.service" when the signal probe said who the sender is. */
function senderOrigin(e: VesperEvent): string {
  const o = senderOriginOf(e);
  return `${o.parent ? `, child of ${task(o.parent)}` : ''}${o.unit ? `, unit ${o.unit}` : ''}`;
}

function describeExit(p: Obj): string {
  const x = obj(p['exit']);
  const unit = unitOfCgroup(str(x['cgroup']));
  const who = `${task(x['task'])}${str(x['filename']) ? ` [${str(x['filename'])}]` : ''}${unit ? ` in ${unit}` : ''}${x['thread'] === true ? ' (thread)' : ''}`;
  const sig = num(x['signal']) ?? 0;
  if (sig !== 0) return `${who} was killed by ${signalName(sig)}`;
  if (x['codeKnown'] === true) return `${who} exited with code ${num(x['exitCode']) ?? 0}`;
  return `${who} exited`;
}

function describeOom(p: Obj): string {
  const o = obj(p['oom']);
  const rss = (num(o['anonRssKb']) ?? 0) + (num(o['fileRssKb']) ?? 0) + (num(o['shmemRssKb']) ?? 0);
  const cg = str(o['memcg']) || str(o['taskMemcg']);
  const trig = obj(o['trigger']);
  const parts = [
    `OOM killer killed ${task(o['victim'])}: ${kib(rss)} resident (${kib(o['anonRssKb'])} anon), ${kib(o['totalVmKb'])} virtual`,
  ];
  if (cg) parts.push(`cgroup ${cg}`);
  if (str(o['constraint'])) parts.push(str(o['constraint']));
  if (num(trig['pid']) !== undefined && num(trig['pid']) !== num(obj(o['victim'])['pid'])) parts.push(`allocation by ${task(trig)}`);
  return parts.join(', ');
}

function describePsi(p: Obj): string {
  const x = obj(p['psi']);
  const avg = num(x['avg10']);
  return (
    `${str(x['resource']) || '?'} pressure (${str(x['kind']) || 'some'}): ${Math.round((num(x['stallUs']) ?? 0) / 1000)} ms stalled ` +
    `in ${seconds((num(x['windowUs']) ?? 0) / 1000)} (threshold ${Math.round((num(x['thresholdUs']) ?? 0) / 1000)} ms)` +
    (avg !== undefined ? `, avg10 ${avg}` : '') +
    (str(x['source']) && !str(x['source']).startsWith('/proc/pressure') ? ` [${str(x['source'])}]` : '')
  );
}

function fields(list: unknown): string {
  if (!Array.isArray(list)) return '';
  return list
    .map((f) => {
      const o = obj(f);
      const v = o['int'] ?? o['uint'] ?? o['str'];
      return `${str(o['name'])}=${String(v)}`;
    })
    .join(' ');
}

const LOSS_SOURCES = ['the agent ring was full', "the kernel's trace buffer overflowed", 'a probe dropped them by its rule'];

function describeGuest(e: VesperEvent): string {
  const p = e.payload;
  if ('signal' in p) return describeSignal(e);
  if ('exit' in p) return describeExit(p);
  if ('exec' in p) {
    const x = obj(p['exec']);
    const unit = unitOfCgroup(str(x['cgroup']));
    const parent = obj(x['parent']);
    const by = num(parent['pid']) !== undefined ? `, child of ${task(parent)}` : '';
    return `${task(x['task'])} ran ${str(x['filename']) || '?'}${unit || by ? ` (${[unit && `in ${unit}`, by.slice(2)].filter(Boolean).join(', ')})` : ''}`;
  }
  if ('fork' in p) {
    const x = obj(p['fork']);
    return `${task(x['parent'])} forked ${task(x['child'])}`;
  }
  if ('oom' in p) return describeOom(p);
  if ('psi' in p) return describePsi(p);
  if ('heartbeat' in p) {
    const h = obj(p['heartbeat']);
    const late = num(h['delayMs']) ?? 0;
    return `heartbeat #${num(h['count']) ?? '?'}${late >= 1 ? ` (timer ${Math.round(late)} ms late)` : ''}`;
  }
  if ('kprobe' in p) {
    const k = obj(p['kprobe']);
    return `kprobe ${str(k['name']) || str(k['symbol'])} in ${task(k['task'])}${fields(k['fields']) ? `: ${fields(k['fields'])}` : ''}`;
  }
  if ('loss' in p) {
    const l = obj(p['loss']);
    return `the agent lost ${num(l['count']) ?? '?'} records: ${LOSS_SOURCES[num(l['source']) ?? 0] ?? 'unknown source'}`;
  }
  if ('probeFault' in p) {
    const f = obj(p['probeFault']);
    return `probe ${str(f['probe'])}/${num(f['instance']) ?? 0} fault ${str(f['code'])}: ${str(f['message'])}${f['unloaded'] === true ? ' (unloaded)' : ''}`;
  }
  if ('agentStopping' in p) {
    const a = obj(p['agentStopping']);
    const state = str(a['systemState']);
    return `the agent was told to stop (${str(a['signal']) || 'a signal'})${state === 'stopping' ? ': the guest is shutting down' : state ? ` (systemd: ${state})` : ''}`;
  }
  if ('generic' in p) return `${e.plugin} ${e.event}: ${fields(obj(p['generic'])['fields'])}`;
  return `${e.plugin} ${e.event}`;
}

function describeLibvirt(e: VesperEvent): string {
  const p = e.payload;
  const detail = [str(p['event']), str(p['reason'])].filter(Boolean).join(' ');
  switch (e.event) {
    case 'watchdog':
      return `libvirt: the guest's watchdog fired (action ${str(p['action']) || '?'})`;
    case 'io-error':
      return `libvirt: I/O error on ${str(p['device']) || 'a disk'}${str(p['reason']) ? ` (${str(p['reason'])})` : ''}, action ${str(p['action']) || '?'}`;
    case 'panicked':
      return `libvirt: the guest kernel panicked${detail ? ` (${detail})` : ''}`;
    case 'crashed':
      return `libvirt: the domain crashed${detail ? ` (${detail})` : ''}`;
    default:
      return `libvirt: domain ${e.event}${detail ? ` (${detail})` : ''}`;
  }
}

/** watch-held's why in words (host/daemon/host-pause.ts). */
export const HELD_WHY: Readonly<Record<string, string>> = {
  user: 'paused by an operator',
  save: 'saved to a file',
  snapshot: 'a snapshot with memory',
  migration: 'migrating',
  dump: 'a memory dump',
  ioerror: 'paused on an I/O error',
  watchdog: 'paused by its watchdog',
  restore: 'being restored',
  'api-error': 'paused after a failed libvirt call',
  paused: 'paused',
};

function describeChannel(e: VesperEvent): string {
  const p = e.payload;
  switch (e.event) {
    case 'agent-connected':
      return `agent connected: pid ${num(p['agentPid']) ?? '?'}, boot ${str(p['bootId']).slice(0, 8) || '?'}${p['agentRestarted'] === true ? ', a new agent run' : ''}`;
    case 'agent-lost':
      return `link to the agent lost${str(p['why']) ? ` (${str(p['why'])})` : ''}`;
    case 'heartbeat-lost':
      return `no heartbeat for ${seconds(p['silentMs'])} (interval ${num(p['intervalMs']) ?? '?'} ms)`;
    case 'heartbeat-back':
      return `heartbeats back after ${seconds(p['silentMs'])} of silence`;
    case 'watch-held':
      return `the host stopped the guest (${HELD_WHY[str(p['why'])] ?? (str(p['why']) || 'paused')}; libvirt: ${str(p['libvirt']) || '?'}): heartbeat-lost and agent-lost held`;
    case 'watch-resumed':
      return p['ended'] === true
        ? `the held domain stopped (libvirt: ${str(p['libvirt']) || '?'}) after ${seconds(p['heldMs'])}`
        : `the guest runs again after ${seconds(p['heldMs'])} stopped by the host (libvirt: ${str(p['libvirt']) || '?'}): detection resumed, the first beat given ${seconds(p['graceMs'])} more${p['linkDropped'] === true ? '; the link was made anew' : ''}`;
    case 'records-lost':
      if (e.record) return describeGuest(e); // the agent's own loss record
      return str(obj(p['loss'])['source']) === 'AGENT_ENDED'
        ? `records lost: ${num(obj(p['loss'])['count']) ?? '?'} numbered by an agent run that ended before the host held them (${str(p['agentRun'])})`
        : `records lost: ${num(obj(p['loss'])['count']) ?? '?'}`;
    default:
      return `channel: ${e.event}`;
  }
}

function describePacemaker(e: VesperEvent): string {
  const p = e.payload;
  const bits = [str(p['rsc']) && `resource ${str(p['rsc'])}`, str(p['task']), str(p['node']) && `on ${str(p['node'])}`]
    .filter(Boolean)
    .join(' ');
  const rc = num(p['rc']);
  const desc = str(p['desc']);
  return `pacemaker: ${e.event}${bits ? ` ${bits}` : ''}${rc !== undefined ? ` rc ${rc}` : ''}${desc ? ` (${desc})` : ''}`;
}

function describeAction(e: VesperEvent): string {
  const p = e.payload;
  const cause = obj(p['cause']);
  const c = num(cause['id']) !== undefined ? ` for event ${num(cause['id'])} (${str(cause['plugin'])} ${str(cause['event'])})` : '';
  return `action ${str(p['action']) || '?'} ${p['ok'] === true ? 'done' : 'failed'}${c}${str(p['error']) ? `: ${str(p['error'])}` : ''}`;
}

/** One line for humans. */
export function describe(e: VesperEvent): string {
  try {
    if (e.source !== null || e.record !== undefined) return describeGuest(e);
    switch (e.plugin) {
      case 'libvirt':
        return describeLibvirt(e);
      case 'channel':
        return describeChannel(e);
      case 'pacemaker':
        return describePacemaker(e);
      case 'action':
        return describeAction(e);
      default:
        return `${e.plugin} ${e.event}`;
    }
  } catch {
    // An undecodable record or an odd payload: the line still names the event.
    return `${e.plugin} ${e.event}`;
  }
}
