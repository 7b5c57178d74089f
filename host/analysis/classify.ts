// Verdicts from one window's timeline: what failed, how sure we are, where (one service, the
// whole guest, the host), and the events each verdict rests on.
//
// The passes go from the hardest evidence to the softest, and each event explains one thing
// only: the hypervisor's own word (a panic, a stop, an I/O error) claims the channel's silence
// around it; an OOM record claims the SIGKILL and the exit that follow; a new agent run on the
// same boot claims the heartbeat gap before it; the watchdog claims the silence of a hang.
// Whatever silence is left unexplained becomes a verdict marked uncertain: a heartbeat gap
// alone does not say whether the guest hung, the agent stalled or the host was slow.
import { FATAL_SIGNALS, FAULT_SIGNALS, SIGNALS, STOP_SIGNALS } from '../../contract/signals.js';
import type { VesperEvent } from '../notify/event.js';
import { signalName, signalOf, task, unitOfCgroup, type Placed } from './timeline.js';
import type { Verdict, VerdictConfidence, VerdictKind, VerdictScope } from './types.js';

const S = 1_000_000;

const ABRT = SIGNALS.ABRT!;
const KILL = SIGNALS.KILL!;
/** si_code the kernel uses for its own signals that are not a fault (OOM killer, rlimits). */
const SI_KERNEL = 128;

const FAULT_CODES: Record<number, Record<number, string>> = {
  11: { 1: 'SEGV_MAPERR: address not mapped', 2: 'SEGV_ACCERR: no permission for the access' },
  7: { 1: 'BUS_ADRALN: misaligned address', 2: 'BUS_ADRERR: no such physical address', 3: 'BUS_OBJERR: hardware error' },
  8: { 1: 'FPE_INTDIV: integer divide by zero', 2: 'FPE_INTOVF: integer overflow' },
  4: { 1: 'ILL_ILLOPC: illegal opcode', 2: 'ILL_ILLOPN: illegal operand' },
};

/** Kinds in order of how much they matter to an operator (for sorting). */
const SEVERITY: VerdictKind[] = [
  'guest-panic',
  'oom',
  'app-crash',
  'guest-hang',
  'io-error',
  'agent-fault',
  'app-killed',
  'channel-loss',
  'guest-stopped',
  'planned-stop',
  'unknown',
];

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

interface Draft {
  kind: VerdictKind;
  scope: VerdictScope;
  confidence: VerdictConfidence;
  summary: string;
  evidence: Set<number>;
  atUs: number;
  details: Obj;
}

/** An agent run's identity: "<boot id>/<agent pid>" (GuestSession's id of a hello). */
function parseRun(run: string): { boot: string; pid: number } {
  const i = run.lastIndexOf('/');
  return { boot: i < 0 ? run : run.slice(0, i), pid: i < 0 ? 0 : Number(run.slice(i + 1)) || 0 };
}

function secs(us: number): string {
  const s = us / S;
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

function clock(us: number): string {
  return new Date(us / 1000).toISOString().slice(11, 23);
}

/** The events of the window in host-clock order, with lookups by kind and time. */
class Window {
  readonly byKind = new Map<string, Placed[]>();
  readonly claimed = new Set<number>();

  constructor(readonly all: readonly Placed[]) {
    for (const p of all) {
      const k = `${p.ev.plugin}/${p.ev.event}`;
      let l = this.byKind.get(k);
      if (l === undefined) this.byKind.set(k, (l = []));
      l.push(p);
    }
  }

  of(kind: string): Placed[] {
    return this.byKind.get(kind) ?? [];
  }

  /** Events of a kind with fromUs <= time <= toUs, unclaimed unless `any`. */
  near(kind: string, fromUs: number, toUs: number, any = false): Placed[] {
    return this.of(kind).filter((p) => p.timeUs >= fromUs && p.timeUs <= toUs && (any || !this.claimed.has(p.id)));
  }

  claim(d: Draft, ps: Iterable<Placed>): void {
    for (const p of ps) {
      this.claimed.add(p.id);
      d.evidence.add(p.id);
    }
  }
}

/** Agent runs in the window: when each was first and last heard of, and its boot and pid. */
interface RunInfo {
  run: string;
  boot: string;
  pid: number;
  firstUs: number;
  lastUs: number;
  lastRecord: Placed | null;
}

function agentRuns(w: Window): RunInfo[] {
  const runs = new Map<string, RunInfo>();
  const see = (run: string, p: Placed, record: boolean): void => {
    let r = runs.get(run);
    if (r === undefined) {
      const { boot, pid } = parseRun(run);
      runs.set(run, (r = { run, boot, pid, firstUs: p.timeUs, lastUs: p.timeUs, lastRecord: null }));
    }
    r.firstUs = Math.min(r.firstUs, p.timeUs);
    r.lastUs = Math.max(r.lastUs, p.timeUs);
    if (record && (r.lastRecord === null || p.timeUs >= r.lastRecord.timeUs)) r.lastRecord = p;
  };
  for (const p of w.all) {
    if (p.ev.source) see(p.ev.source.agentRun, p, true);
    else if (p.ev.plugin === 'channel' && p.ev.event === 'agent-connected') {
      const boot = str(p.ev.payload['bootId']);
      const pid = num(p.ev.payload['agentPid']);
      if (boot && pid !== undefined) see(`${boot}/${pid}`, p, false);
    }
  }
  return [...runs.values()].sort((a, b) => a.firstUs - b.firstUs);
}

/** The agent run that started last before `us`, other than `except` (the run a hello announces). */
function runBefore(runs: RunInfo[], us: number, except = ''): RunInfo | null {
  let best: RunInfo | null = null;
  for (const r of runs) if (r.run !== except && r.firstUs < us && (best === null || r.firstUs > best.firstUs)) best = r;
  return best;
}

/** The run an agent-connected event announces ("<boot id>/<pid>"), '' when its payload lacks them. */
function runOfHello(p: Placed): string {
  const boot = str(p.ev.payload['bootId']);
  const pid = num(p.ev.payload['agentPid']);
  return boot && pid !== undefined ? `${boot}/${pid}` : '';
}

function draft(
  kind: VerdictKind,
  scope: VerdictScope,
  confidence: VerdictConfidence,
  atUs: number,
  summary: string,
  details: Obj = {},
): Draft {
  return { kind, scope, confidence, summary, evidence: new Set(), atUs, details };
}

/** Groups time-ordered events that follow each other within gapUs. */
function clusters(ps: Placed[], gapUs: number): Placed[][] {
  const out: Placed[][] = [];
  for (const p of ps) {
    const last = out.at(-1);
    if (last && p.timeUs - (last.at(-1) as Placed).timeUs <= gapUs) last.push(p);
    else out.push([p]);
  }
  return out;
}

const CHANNEL_SILENCE = ['channel/agent-lost', 'channel/heartbeat-lost', 'channel/heartbeat-back'];

// ------------------------------------------------------------------ passes

/** Guest kernel panic: libvirt's panicked (pvpanic) and crashed, with the silence they cause. */
function panics(w: Window, out: Draft[]): void {
  const evs = [...w.of('libvirt/panicked'), ...w.of('libvirt/crashed')].sort((a, b) => a.timeUs - b.timeUs);
  for (const group of clusters(evs, 30 * S)) {
    const first = group[0] as Placed;
    const last = group.at(-1) as Placed;
    const reasons = group.map((p) => [str(p.ev.payload['event']), str(p.ev.payload['reason'])].filter(Boolean).join(' ')).filter(Boolean);
    const panicked = group.some((p) => p.ev.event === 'panicked' || /panic/i.test(str(p.ev.payload['reason'])));
    const d = draft(
      'guest-panic',
      'guest',
      'confident',
      first.timeUs,
      panicked
        ? `The guest kernel panicked at ${clock(first.timeUs)} (libvirt: ${reasons.join('; ') || 'panicked'}): the whole guest went down.`
        : `The domain crashed at ${clock(first.timeUs)} (libvirt: ${reasons.join('; ') || 'crashed'}): the whole guest went down.`,
      { libvirt: reasons },
    );
    w.claim(d, group);
    // What the crash silenced, and a watchdog that fired as the kernel died.
    for (const k of [...CHANNEL_SILENCE, 'libvirt/stopped', 'libvirt/watchdog'])
      w.claim(d, w.near(k, first.timeUs - 10 * S, last.timeUs + 60 * S));
    // Only an OOM of the whole guest can have brought the kernel down (panic_on_oom); one held
    // to a cgroup's limit (CONSTRAINT_MEMCG) is that cgroup's business, and gets its own verdict.
    const oom = w
      .near('oom/oom_kill', first.timeUs - 10 * S, first.timeUs, true)
      .filter((p) => str(obj(p.ev.payload['oom'])['constraint']) !== 'CONSTRAINT_MEMCG');
    if (oom.length) {
      d.details['oomBefore'] = oom.map((p) => task(obj(p.ev.payload['oom'])['victim']));
      d.summary += ` The OOM killer ran just before (${(d.details['oomBefore'] as string[]).join(', ')}): memory exhaustion may have led to it.`;
      w.claim(d, oom);
    }
    claimRestart(w, d, last.timeUs);
    out.push(d);
  }
}

/**
 * The domain started again after it went down, and the agent of its new boot: consequences of
 * the verdict (an operator's or a cluster's restart), not a reboot of their own.
 */
function claimRestart(w: Window, d: Draft, downUs: number): void {
  const started = w.near('libvirt/started', downUs, downUs + 600 * S)[0];
  if (!started) return;
  d.details['startedAgainUs'] = started.timeUs;
  w.claim(d, [started]);
  const hello = w.near('channel/agent-connected', started.timeUs, started.timeUs + 300 * S)[0];
  if (hello) w.claim(d, [hello]);
}

/** Disk I/O errors libvirt reported, with the pause they caused. */
function ioErrors(w: Window, out: Draft[]): void {
  for (const group of clusters(w.of('libvirt/io-error'), 60 * S)) {
    const first = group[0] as Placed;
    const devices = [...new Set(group.map((p) => str(p.ev.payload['device']) || '?'))];
    const reasons = [...new Set(group.map((p) => str(p.ev.payload['reason'])).filter(Boolean))];
    const actions = [...new Set(group.map((p) => str(p.ev.payload['action'])).filter(Boolean))];
    const d = draft(
      'io-error',
      'host',
      'confident',
      first.timeUs,
      `The hypervisor hit I/O errors on ${devices.join(', ')}${reasons.length ? ` (${reasons.join(', ')})` : ''} from ${clock(first.timeUs)}, ` +
        `${group.length} time${group.length === 1 ? '' : 's'}, action ${actions.join('/') || '?'}: the host's storage under the guest failed, not the guest.`,
      { devices, reasons, actions, count: group.length },
    );
    w.claim(d, group);
    const end = (group.at(-1) as Placed).timeUs;
    w.claim(
      d,
      w.near('libvirt/suspended', first.timeUs - S, end + 5 * S).filter((p) => /i\/?o/i.test(str(p.ev.payload['reason']))),
    );
    out.push(d);
  }
}

/** Planned stops and reboots of the whole guest (not crashes). */
function stopsAndReboots(w: Window, runs: RunInfo[], out: Draft[]): void {
  for (const p of [...w.of('libvirt/stopped'), ...w.of('libvirt/shutdown')]) {
    if (w.claimed.has(p.id)) continue;
    const reason = [str(p.ev.payload['event']), str(p.ev.payload['reason'])].filter(Boolean).join(' ');
    const action = w.all.find(
      (a) =>
        a.ev.plugin === 'action' &&
        a.timeUs <= p.timeUs + 5 * S &&
        a.timeUs >= p.timeUs - 120 * S &&
        /restart|failover|fence|stop/i.test(str(a.ev.payload['action'])),
    );
    const by = action
      ? `vesper's ${str(action.ev.payload['action'])} action (for event ${num(obj(action.ev.payload['cause'])['id']) ?? '?'})`
      : p.ev.event === 'shutdown'
        ? 'a shutdown from inside the guest or an operator'
        : 'an operator, a tool or the host';
    const d = draft(
      'guest-stopped',
      'guest',
      'confident',
      p.timeUs,
      `The domain ${p.ev.event === 'shutdown' ? 'shut down' : 'stopped'} at ${clock(p.timeUs)} (libvirt: ${reason || p.ev.event}), by ${by}: planned, not a crash.`,
      { reason },
    );
    w.claim(d, [p, ...(action ? [action] : [])]);
    w.claim(d, w.near('libvirt/shutdown', p.timeUs - 10 * S, p.timeUs + 10 * S));
    for (const k of CHANNEL_SILENCE) w.claim(d, w.near(k, p.timeUs - 5 * S, p.timeUs + 30 * S));
    claimRestart(w, d, p.timeUs);
    out.push(d);
  }
  // A reboot: libvirt's word, or an agent of a new boot.
  const reboots: Placed[] = [...w.of('libvirt/rebooted').filter((p) => !w.claimed.has(p.id))];
  for (const c of w.of('channel/agent-connected')) {
    const prev = runBefore(runs, c.timeUs, runOfHello(c));
    const boot = str(c.ev.payload['bootId']);
    // A new boot right after the domain was started is that start's, not a reboot.
    const fresh = w.near('libvirt/started', c.timeUs - 300 * S, c.timeUs, true).length > 0;
    if (prev && boot && prev.boot !== boot && !fresh && !w.claimed.has(c.id)) reboots.push(c);
  }
  reboots.sort((a, b) => a.timeUs - b.timeUs);
  for (const group of clusters(reboots, 180 * S)) {
    const first = group[0] as Placed;
    const libvirt = group.some((p) => p.ev.plugin === 'libvirt');
    const d = draft(
      'guest-stopped',
      'guest',
      'confident',
      first.timeUs,
      `The guest rebooted at ${clock(first.timeUs)} (${libvirt ? 'libvirt reported the reboot' : 'the agent came back with a new boot id'}), ` +
        'without a kernel panic: a reboot from inside the guest or by an operator.',
      { rebooted: true },
    );
    w.claim(d, group);
    const end = (group.at(-1) as Placed).timeUs;
    for (const k of [...CHANNEL_SILENCE, 'channel/agent-connected']) w.claim(d, w.near(k, first.timeUs - 5 * S, end + 10 * S));
    out.push(d);
  }
}

/** OOM kills, grouped per cgroup and burst, with the kill, the exit and the pressure before. */
function ooms(w: Window, out: Draft[]): void {
  const kills = w.of('oom/oom_kill').filter((p) => !w.claimed.has(p.id));
  const byCg = new Map<string, Placed[]>();
  for (const p of kills) {
    const o = obj(p.ev.payload['oom']);
    const cg = str(o['memcg']) || str(o['taskMemcg']) || '/';
    let l = byCg.get(cg);
    if (l === undefined) byCg.set(cg, (l = []));
    l.push(p);
  }
  for (const [cg, list] of byCg)
    for (const group of clusters(list, 5 * S)) {
      const first = group[0] as Placed;
      const end = (group.at(-1) as Placed).timeUs;
      const oom0 = obj(first.ev.payload['oom']);
      const constraint = str(oom0['constraint']);
      const victims = group.map((p) => {
        const o = obj(p.ev.payload['oom']);
        const v = obj(o['victim']);
        return {
          pid: num(v['pid']) ?? 0,
          comm: str(v['comm']),
          anonRssKb: num(o['anonRssKb']) ?? 0,
          fileRssKb: num(o['fileRssKb']) ?? 0,
          shmemRssKb: num(o['shmemRssKb']) ?? 0,
          totalVmKb: num(o['totalVmKb']) ?? 0,
          oomScoreAdj: num(o['oomScoreAdj']) ?? 0,
          taskMemcg: str(o['taskMemcg']),
        };
      });
      const pids = new Set(victims.map((v) => v.pid));
      const oomGroup = group.map((p) => str(obj(p.ev.payload['oom'])['oomGroup'])).find(Boolean) ?? '';
      // Limited to a cgroup: that group's services; the whole guest's memory: the guest.
      const scope: VerdictScope = constraint === 'CONSTRAINT_MEMCG' || (constraint === '' && cg !== '/') ? 'service' : 'guest';
      const d = draft('oom', scope, 'confident', first.timeUs, '', {
        victims,
        cgroup: cg,
        constraint: constraint || null,
        oomGroup: oomGroup || null,
      });
      w.claim(d, group);
      // The OOM killer's SIGKILL and the victims' exits are its consequence, not crashes; and
      // only those: another SIGKILL near an OOM is not the OOM's. Each task the OOM killer
      // kills (with memory.oom.group, every task of the group) has a record of its own; should
      // one be missing, its SIGKILL is still the kernel's (SI_KERNEL), sent in the same moment
      // by the same task as a victim's.
      const kills = w.near('signal/signal', first.timeUs - 2 * S, end + 10 * S).filter((p) => {
        const s = signalOf(p.ev);
        return s !== null && s.sig === KILL && pids.has(num(s.target['pid']) ?? -1);
      });
      if (oomGroup) {
        const by = kills.map((p) => ({ pid: num(signalOf(p.ev)!.sender['pid']), us: p.timeUs }));
        const more = w.near('signal/signal', first.timeUs - 2 * S, end + 10 * S).filter((p) => {
          const s = signalOf(p.ev);
          return (
            s !== null &&
            s.sig === KILL &&
            s.senderIsKernel &&
            s.code === SI_KERNEL &&
            by.some((b) => b.pid === num(s.sender['pid']) && Math.abs(b.us - p.timeUs) <= S)
          );
        });
        for (const p of more) if (!kills.includes(p)) kills.push(p);
      }
      w.claim(d, kills);
      const killed = new Set([...pids, ...kills.map((p) => num(signalOf(p.ev)!.target['pid']) ?? -1)]);
      const exits = w.near('process/exit', first.timeUs - S, end + 10 * S).filter((p) => {
        const x = obj(p.ev.payload['exit']);
        return killed.has(num(obj(x['task'])['pid']) ?? -1) && num(x['signal']) === KILL;
      });
      w.claim(d, exits);
      const trig = obj(oom0['trigger']);
      const psi = w
        .near('psi/pressure', first.timeUs - 120 * S, first.timeUs, true)
        .filter((p) => str(obj(p.ev.payload['psi'])['resource']) === 'memory');
      w.claim(d, psi);
      w.claim(d, w.near('oom/memory_events', first.timeUs - 5 * S, end + 5 * S));
      // Other consumers, when a probe reported them (kernels and probes that list tasks).
      const consumers = oom0['tasks'] ?? oom0['consumers'];
      if (Array.isArray(consumers)) d.details['otherConsumers'] = consumers.slice(0, 5);
      const v0 = victims[0]!;
      const rss = v0.anonRssKb + v0.fileRssKb + v0.shmemRssKb;
      const others =
        victims.length > 1
          ? ` and ${victims.length - 1} other task${victims.length > 2 ? 's' : ''}${oomGroup ? ` of ${oomGroup} (memory.oom.group: the whole group is killed together)` : ''}`
          : oomGroup
            ? ` (memory.oom.group: every task of ${oomGroup} is killed with it)`
            : '';
      const where =
        scope === 'service'
          ? `cgroup ${cg} reached its memory limit (${constraint || 'a cgroup limit'})`
          : `the guest ran out of memory (${constraint || 'no cgroup limit'})`;
      const maxStall = psi.reduce((m, p) => Math.max(m, num(obj(p.ev.payload['psi'])['stallUs']) ?? 0), 0);
      const pressure = psi.length
        ? ` Memory pressure was reported ${psi.length} time${psi.length === 1 ? '' : 's'} in the 2 min before (up to ${Math.round(maxStall / 1000)} ms stalled per window).`
        : '';
      d.details['psiBefore'] = psi.length;
      d.details['trigger'] = Object.keys(trig).length ? trig : null;
      d.details['exitsSeen'] = exits.length;
      const trigText =
        num(trig['pid']) !== undefined && !pids.has(num(trig['pid']) as number) ? `; the allocation that hit it was by ${task(trig)}` : '';
      d.summary =
        `The OOM killer killed ${v0.pid} (${v0.comm || '?'}), ${Math.round(rss / 1024)} MiB resident${others}, at ${clock(first.timeUs)}: ${where}${trigText}.` +
        pressure +
        (Array.isArray(consumers) ? '' : ' The probe does not list the other consumers of memory.');
      out.push(d);
    }
}

/** The sending process's parent, cgroup and unit, as the signal probe read them (empty when unknown). */
function senderOriginOf(p: Placed): { parent: Obj | null; cgroup: string | null; unit: string | null } {
  const s = obj(p.ev.payload['signal']);
  const parent = obj(s['senderParent']);
  const cgroup = str(s['senderCgroup']);
  return { parent: num(parent['pid']) !== undefined ? parent : null, cgroup: cgroup || null, unit: unitOfCgroup(cgroup) || null };
}

/** "1234 (pkill), child of 1000 (bash), in unit session-3.scope": who sent a signal, as far as known. */
function senderText(p: Placed): string {
  const s = signalOf(p.ev)!;
  const o = senderOriginOf(p);
  const extra: string[] = [];
  if (num(s.sender['pid']) === 1) extra.push('the service manager');
  if (o.parent) extra.push(`child of ${task(o.parent)}`);
  if (o.unit) extra.push(`in unit ${o.unit}`);
  else if (o.cgroup) extra.push(`in cgroup ${o.cgroup}`);
  return `${task(s.sender)}${extra.length ? ` (${extra.join(', ')})` : ''}`;
}

/**
 * The guest's shutdown or reboot this signal was part of: sent by PID 1 (the service manager
 * stopping every unit, then systemd-shutdown killing what is left) within 2 min before the
 * guest went down.
 */
function plannedShutdown(out: Draft[], p: Placed, senderPid: number): Draft | null {
  if (senderPid !== 1) return null;
  return out.find((d) => d.kind === 'guest-stopped' && d.atUs >= p.timeUs - S && d.atUs <= p.timeUs + 120 * S) ?? null;
}

interface AgentKill {
  signal: Placed;
  run: RunInfo;
}

/** Fatal signals: a fault, another process, the process itself. Signals to the agent are kept for agentFaults. */
function signals(w: Window, runs: RunInfo[], out: Draft[], agentKills: AgentKill[]): void {
  const agentPids = new Map<number, RunInfo>();
  for (const r of runs) if (r.pid) agentPids.set(r.pid, r);
  // Per target: a SIGTERM and the SIGKILL that follows it are one stop.
  const pending = new Map<string, Draft>();
  for (const p of w.of('signal/signal')) {
    if (w.claimed.has(p.id)) continue;
    const s = signalOf(p.ev);
    if (s === null || s.result !== 0) continue;
    const tpid = num(s.target['pid']) ?? 0;
    const spid = num(s.sender['pid']) ?? 0;
    const exit = w.near('process/exit', p.timeUs - S, p.timeUs + 10 * S).find((x) => {
      const e = obj(x.ev.payload['exit']);
      return num(obj(e['task'])['pid']) === tpid && x.ev.source?.agentRun === p.ev.source?.agentRun;
    });
    const diedOf = exit ? (num(obj(exit.ev.payload['exit'])['signal']) ?? 0) : 0;
    if (!FATAL_SIGNALS.has(s.sig) && diedOf !== s.sig) continue; // a handled signal (USR1, ...) that did not kill
    const run = p.ev.source ? runs.find((r) => r.run === p.ev.source!.agentRun) : undefined;
    const agent = agentPids.get(tpid);
    if (agent && run && agent.boot === run.boot) {
      agentKills.push({ signal: p, run: agent });
      continue;
    }
    const sn = signalName(s.sig);
    const who = task(s.target);
    const fate = exit
      ? diedOf
        ? ` It died of ${signalName(diedOf)}.`
        : ` It exited (code ${num(obj(exit.ev.payload['exit'])['exitCode']) ?? '?'}).`
      : '';
    const scope: VerdictScope = tpid === 1 ? 'guest' : 'service';
    let kind: VerdictKind;
    let confidence: VerdictConfidence = 'confident';
    let summary: string;
    if (s.senderIsKernel && FAULT_SIGNALS.has(s.sig) && s.code < SI_KERNEL) {
      kind = 'app-crash';
      const why = FAULT_CODES[s.sig]?.[s.code];
      summary = `${who} crashed at ${clock(p.timeUs)}: the kernel sent ${sn} after a fault of its own (si_code ${s.code}${why ? `, ${why}` : ''}).${fate}`;
    } else if (s.senderIsKernel) {
      kind = 'app-killed';
      confidence = s.sig === KILL ? 'uncertain' : 'confident';
      summary =
        s.sig === KILL
          ? `${who} was killed by the kernel with SIGKILL at ${clock(p.timeUs)} (si_code ${s.code}) and no OOM record explains it: the OOM killer with the oom probe not attached, or another kernel kill.${fate}`
          : `${who} was sent ${sn} by the kernel at ${clock(p.timeUs)} (si_code ${s.code}: a resource limit or a kernel decision, not a fault).${fate}`;
    } else if (spid === tpid) {
      kind = FATAL_SIGNALS.has(s.sig) && !STOP_SIGNALS.has(s.sig) ? 'app-crash' : 'app-killed';
      confidence = kind === 'app-crash' ? 'confident' : 'uncertain';
      summary =
        s.sig === ABRT
          ? `${who} aborted itself at ${clock(p.timeUs)} (${sn}: an assertion, abort() or a fatal runtime error).${fate}`
          : `${who} sent ${sn} to itself at ${clock(p.timeUs)}.${fate}`;
    } else {
      // Another process sent it. Who, vesper can say; why, it cannot: a supervisor killing a
      // hung worker, a script killing the wrong pid and an administrator all look the same.
      // Only a stop it knows to be planned (the guest's own shutdown) is called planned.
      const from = senderText(p);
      const shutdown = STOP_SIGNALS.has(s.sig) ? plannedShutdown(out, p, spid) : null;
      if (shutdown) {
        kind = 'planned-stop';
        summary =
          `${who} was stopped with ${sn} by ${from} at ${clock(p.timeUs)}, as part of the guest's shutdown at ${clock(shutdown.atUs)}: ` +
          `planned, not a failure.${fate}`;
      } else {
        kind = 'app-killed';
        summary =
          `${who} was sent ${sn} by ${from} at ${clock(p.timeUs)}: another process ${STOP_SIGNALS.has(s.sig) ? 'stopped' : 'killed'} it, not a fault of its own. ` +
          `vesper cannot tell whether that was planned (a stop, a supervisor) or a mistake.${fate}`;
      }
    }
    const details: Obj = {
      signal: sn,
      sig: s.sig,
      code: s.code,
      target: s.target,
      sender: s.senderIsKernel ? 'kernel' : s.sender,
      senderIsKernel: s.senderIsKernel,
      died: exit ? true : null,
    };
    if (!s.senderIsKernel && spid !== tpid) {
      const o = senderOriginOf(p);
      details['senderParent'] = o.parent;
      details['senderCgroup'] = o.cgroup;
      details['senderUnit'] = o.unit;
    }
    const key = `${p.ev.source?.agentRun ?? ''}:${tpid}:${kind}:${s.senderIsKernel ? 'kernel' : spid}`;
    const prev = pending.get(key);
    if (prev && p.timeUs - prev.atUs <= 30 * S && !s.senderIsKernel && spid !== tpid && STOP_SIGNALS.has(s.sig)) {
      // SIGTERM, then SIGKILL from the same sender when it did not go: one stop.
      prev.summary = prev.summary.replace(/ by /, ` then ${sn} by `);
      w.claim(prev, [p, ...(exit ? [exit] : [])]);
      continue;
    }
    const d = draft(kind, scope, confidence, p.timeUs, summary, details);
    w.claim(d, [p, ...(exit ? [exit] : [])]);
    pending.set(key, d);
    out.push(d);
  }
  // Deaths by a signal nobody reported (signal probe not attached, signal not watched).
  for (const p of w.of('process/exit')) {
    if (w.claimed.has(p.id)) continue;
    const x = obj(p.ev.payload['exit']);
    const sig = num(x['signal']) ?? 0;
    if (!sig || !FATAL_SIGNALS.has(sig) || x['thread'] === true) continue;
    const who = task(x['task']);
    const sn = signalName(sig);
    const d =
      FAULT_SIGNALS.has(sig) || sig === ABRT
        ? draft(
            'app-crash',
            'service',
            'uncertain',
            p.timeUs,
            `${who} died of ${sn} at ${clock(p.timeUs)}; no signal record says who sent it (most often a fault of its own).`,
          )
        : draft(
            'app-killed',
            'service',
            'uncertain',
            p.timeUs,
            `${who} was killed by ${sn} at ${clock(p.timeUs)}; no signal record says by whom (an administrator, a script or the kernel).`,
          );
    d.details = { signal: sn, sig, target: x['task'] };
    w.claim(d, [p]);
    out.push(d);
  }
}

/** The watchdog, fed from guest userspace, fired: userspace hung while the domain ran. */
function hangs(w: Window, out: Draft[]): void {
  for (const group of clusters(
    w.of('libvirt/watchdog').filter((p) => !w.claimed.has(p.id)),
    60 * S,
  )) {
    const first = group[0] as Placed;
    const end = (group.at(-1) as Placed).timeUs;
    const d = draft('guest-hang', 'guest', 'confident', first.timeUs, '', { action: str(first.ev.payload['action']) || null });
    w.claim(d, group);
    const lost = w.near('channel/heartbeat-lost', first.timeUs - 30 * S, end + 30 * S);
    w.claim(d, lost);
    const from = Math.min(first.timeUs, ...lost.map((p) => p.timeUs));
    const back = w.near('channel/heartbeat-back', from, end + 600 * S)[0];
    if (back) w.claim(d, [back]);
    // The link may drop while the guest cannot answer; it comes back to the same agent.
    w.claim(d, w.near('channel/agent-lost', from - 5 * S, (back?.timeUs ?? end) + 5 * S));
    const silentMs = num(back?.ev.payload['silentMs']);
    d.details['silentMs'] = silentMs ?? null;
    d.atUs = from;
    d.summary =
      `Guest userspace hung from about ${clock(from)}: the watchdog, fed from userspace, fired (action ${str(first.ev.payload['action']) || '?'})` +
      `${lost.length ? ' and heartbeats stopped' : ''} while the domain kept running` +
      `${silentMs !== undefined ? `; heartbeats came back after ${secs(silentMs * 1000)}` : back ? '' : '; heartbeats had not come back by the end of the window'}.`;
    out.push(d);
  }
}

/** The agent went away while the guest lived: a new agent run on the same boot, or a signal to it. */
function agentFaults(w: Window, runs: RunInfo[], out: Draft[], kills: AgentKill[]): void {
  for (const c of w.of('channel/agent-connected')) {
    if (w.claimed.has(c.id)) continue;
    const boot = str(c.ev.payload['bootId']);
    const pid = num(c.ev.payload['agentPid']);
    const prev = runBefore(runs, c.timeUs, runOfHello(c));
    // Without an earlier run in the window, a hello after a vesperd restart looks the same.
    if (!prev || !boot || prev.boot !== boot || prev.pid === pid) continue;
    const lastUs = prev.lastRecord?.timeUs ?? prev.lastUs;
    const d = draft('agent-fault', 'service', 'confident', lastUs, '', { oldAgentPid: prev.pid, newAgentPid: pid ?? null, bootId: boot });
    w.claim(d, [c]);
    if (prev.lastRecord) d.evidence.add(prev.lastRecord.id);
    // The silence between the old agent's last record and the new one's hello, and the first
    // heartbeat after it; nothing later (a hang that follows is its own story).
    for (const k of ['channel/agent-lost', 'channel/heartbeat-lost', 'channel/records-lost'])
      w.claim(d, w.near(k, lastUs - 5 * S, c.timeUs + 2 * S));
    w.claim(d, w.near('channel/heartbeat-back', lastUs, c.timeUs + 15 * S).slice(0, 1));
    const kill = kills.find((k) => k.run.run === prev.run);
    const oomed = w
      .of('oom/oom_kill')
      .find((p) => num(obj(obj(p.ev.payload['oom'])['victim'])['pid']) === prev.pid && p.ev.source?.agentRun.startsWith(`${boot}/`));
    let how = 'it ended without a record of why (killed with SIGKILL, or crashed: it cannot report its own death)';
    if (kill) {
      const s = signalOf(kill.signal.ev)!;
      how = `it was sent ${signalName(s.sig)} by ${s.senderIsKernel ? 'the kernel' : task(s.sender)}`;
      w.claim(d, [kill.signal]);
      d.details['signal'] = signalName(s.sig);
      d.details['sender'] = s.senderIsKernel ? 'kernel' : s.sender;
    } else if (oomed) {
      how = 'the OOM killer chose it';
      d.evidence.add(oomed.id);
    }
    d.summary =
      `The vesper agent (pid ${prev.pid}) stopped at about ${clock(lastUs)} while the guest kept running (same boot, no hypervisor event): ${how}. ` +
      `A new agent (pid ${pid ?? '?'}) connected ${secs(Math.max(0, c.timeUs - lastUs))} later; guest events in between were not seen.`;
    out.push(d);
  }
  // A signal to the agent with no new run in the window (yet).
  for (const k of kills) {
    if (w.claimed.has(k.signal.id)) continue;
    const s = signalOf(k.signal.ev)!;
    const d = draft(
      'agent-fault',
      'service',
      STOP_SIGNALS.has(s.sig) || FAULT_SIGNALS.has(s.sig) ? 'confident' : 'uncertain',
      k.signal.timeUs,
      `The vesper agent (pid ${k.run.pid}) was sent ${signalName(s.sig)} by ${s.senderIsKernel ? 'the kernel' : task(s.sender)} at ${clock(k.signal.timeUs)}; ` +
        'no new agent connected within the window.',
      { oldAgentPid: k.run.pid, signal: signalName(s.sig) },
    );
    w.claim(d, [k.signal]);
    for (const kk of CHANNEL_SILENCE) w.claim(d, w.near(kk, k.signal.timeUs - S, k.signal.timeUs + 30 * S));
    out.push(d);
  }
}

/** What is left of the channel: a link that broke and came back to the same agent, a link that did not come back, a heartbeat gap. */
function channelLeftovers(w: Window, runs: RunInfo[], out: Draft[]): void {
  for (const l of w.of('channel/agent-lost')) {
    if (w.claimed.has(l.id)) continue;
    const prev = runBefore(runs, l.timeUs);
    const back = w.near('channel/agent-connected', l.timeUs, Infinity, true)[0];
    if (back) {
      const samePid = prev && num(back.ev.payload['agentPid']) === prev.pid && str(back.ev.payload['bootId']) === prev.boot;
      // Records the guest made while the link was down (resent after it came back) show it lived.
      const lived =
        prev !== null &&
        w.all.some(
          (p) => p.ev.source?.agentRun === prev.run && p.ev.guestTimeUs !== null && p.timeUs > l.timeUs + S && p.timeUs < back.timeUs - S,
        );
      const d = draft(
        'channel-loss',
        'host',
        samePid && lived ? 'confident' : 'uncertain',
        l.timeUs,
        `The link to the agent broke at ${clock(l.timeUs)} (${str(l.ev.payload['why']) || 'no reason given'}) and came back ${secs(back.timeUs - l.timeUs)} later` +
          (samePid
            ? ` to the same agent (pid ${prev.pid})${lived ? ', which kept recording meanwhile: the channel failed, not the guest' : ': the agent lived; the guest may have stalled or the channel failed'}.`
            : '.'),
        { why: str(l.ev.payload['why']) || null },
      );
      w.claim(d, [l, back]);
      for (const k of ['channel/heartbeat-lost', 'channel/heartbeat-back']) w.claim(d, w.near(k, l.timeUs - 5 * S, back.timeUs + 5 * S));
      out.push(d);
    } else {
      const d = draft(
        'agent-fault',
        'guest',
        'uncertain',
        l.timeUs,
        `The link to the agent broke at ${clock(l.timeUs)} (${str(l.ev.payload['why']) || 'no reason given'}) and did not come back within the window, ` +
          'while the hypervisor reported nothing about the domain: the agent died or hung, or the whole guest hung; the evidence does not tell which.',
        { why: str(l.ev.payload['why']) || null },
      );
      w.claim(d, [l]);
      for (const k of ['channel/heartbeat-lost', 'channel/heartbeat-back']) w.claim(d, w.near(k, l.timeUs - 10 * S, Infinity));
      out.push(d);
    }
  }
  for (const h of w.of('channel/heartbeat-lost')) {
    if (w.claimed.has(h.id)) continue;
    const back = w.near('channel/heartbeat-back', h.timeUs, Infinity)[0];
    const silentMs = num(back?.ev.payload['silentMs']);
    const prev = runBefore(runs, h.timeUs);
    const resumed =
      back !== undefined && prev !== null && w.all.some((p) => p.ev.source?.agentRun === prev.run && p.timeUs >= back.timeUs - S);
    const d = draft(
      'guest-hang',
      'guest',
      'uncertain',
      h.timeUs,
      `Heartbeats stopped at ${clock(h.timeUs)}` +
        (silentMs !== undefined ? ` for ${secs(silentMs * 1000)}` : ' and had not come back by the end of the window') +
        ` while the hypervisor reported the domain running${resumed ? ' and the same agent resumed afterwards' : ''}. ` +
        'Only the heartbeat gap says so: the guest may have hung, or only the agent stalled, or the host starved the guest.',
      { silentMs: silentMs ?? null, resumed },
    );
    w.claim(d, [h, ...(back ? [back] : [])]);
    out.push(d);
  }
  const lost = w.of('channel/records-lost').filter((p) => !w.claimed.has(p.id));
  if (lost.length) {
    const count = lost.reduce((n, p) => n + (num(obj(p.ev.payload['loss'])['count']) ?? 0), 0);
    const d = draft(
      'channel-loss',
      'guest',
      'confident',
      (lost[0] as Placed).timeUs,
      `The agent dropped ${count} record${count === 1 ? '' : 's'} (${lost.length} loss report${lost.length === 1 ? '' : 's'}, from ${clock((lost[0] as Placed).timeUs)}): ` +
        'this timeline misses guest events around then.',
      { records: count },
    );
    w.claim(d, lost);
    out.push(d);
  }
}

/** Pacemaker's word: evidence for a verdict near it, or a verdict of its own when vesper saw nothing. */
function pacemaker(w: Window, out: Draft[]): void {
  for (const p of [...w.of('pacemaker/resource-failed'), ...w.of('pacemaker/node-lost'), ...w.of('pacemaker/fencing')]) {
    if (w.claimed.has(p.id)) continue;
    const near = out
      .filter((d) => Math.abs(d.atUs - p.timeUs) <= 60 * S)
      .sort((a, b) => Math.abs(a.atUs - p.timeUs) - Math.abs(b.atUs - p.timeUs))[0];
    if (near) {
      w.claim(near, [p]);
      continue;
    }
    const host = p.ev.event !== 'resource-failed';
    const d = draft(
      'unknown',
      host ? 'host' : 'service',
      'uncertain',
      p.timeUs,
      `Pacemaker reported ${p.ev.event}${str(p.ev.payload['rsc']) ? ` for ${str(p.ev.payload['rsc'])}` : ''}${str(p.ev.payload['task']) ? ` (${str(p.ev.payload['task'])}` + (num(p.ev.payload['rc']) !== undefined ? ` rc ${num(p.ev.payload['rc'])})` : ')') : ''} at ${clock(p.timeUs)}; ` +
        "vesper's own events in the window do not say what happened.",
    );
    w.claim(d, [p]);
    out.push(d);
  }
}

/** Vesper's actions follow the events that caused them: they go with those verdicts. */
function actions(w: Window, out: Draft[]): void {
  for (const a of [...w.of('action/done'), ...w.of('action/failed')]) {
    const cause = num(obj(a.ev.payload['cause'])['id']);
    const d = cause !== undefined ? out.find((x) => x.evidence.has(cause)) : undefined;
    if (d) w.claim(d, [a]);
  }
}

// ------------------------------------------------------------------ entry

export interface ClassifyOptions {
  /** the event the window was chosen around: verdicts resting on it come first */
  anchorId?: number | null;
}

/** Verdicts for a window's placed events (host-clock order). */
export function classify(placed: readonly Placed[], o: ClassifyOptions = {}): Verdict[] {
  const w = new Window(placed);
  const runs = agentRuns(w);
  const out: Draft[] = [];
  const agentKills: AgentKill[] = [];
  panics(w, out);
  ioErrors(w, out);
  stopsAndReboots(w, runs, out);
  ooms(w, out);
  signals(w, runs, out, agentKills);
  // A new agent run is hard evidence; the watchdog's hang then gets only the silence left.
  agentFaults(w, runs, out, agentKills);
  hangs(w, out);
  channelLeftovers(w, runs, out);
  pacemaker(w, out);
  actions(w, out);
  const timeOf = new Map(placed.map((p) => [p.id, p.timeUs]));
  const anchor = o.anchorId ?? null;
  const rank = (d: Draft): number[] => [
    anchor !== null && d.evidence.has(anchor) ? 0 : 1,
    d.confidence === 'confident' ? 0 : 1,
    SEVERITY.indexOf(d.kind),
    -d.atUs,
  ];
  out.sort((a, b) => {
    const ra = rank(a);
    const rb = rank(b);
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return (ra[i] as number) - (rb[i] as number);
    return 0;
  });
  return out.map((d) => {
    const v: Verdict = {
      kind: d.kind,
      scope: d.scope,
      confidence: d.confidence,
      summary: d.summary,
      evidence: [...d.evidence].sort((a, b) => (timeOf.get(a) ?? 0) - (timeOf.get(b) ?? 0) || a - b),
      atUs: d.atUs,
    };
    if (Object.keys(d.details).length) v.details = d.details;
    return v;
  });
}

/** Is this event one a failure analysis starts from (for --last and --at)? */
export function isFailureLike(e: VesperEvent): boolean {
  switch (`${e.plugin}/${e.event}`) {
    case 'signal/signal': {
      const s = signalOf(e);
      return s !== null && s.result === 0 && FATAL_SIGNALS.has(s.sig);
    }
    case 'process/exit': {
      const x = obj(e.payload['exit']);
      return FATAL_SIGNALS.has(num(x['signal']) ?? 0) && x['thread'] !== true;
    }
    case 'channel/agent-connected':
      // A new agent process that had to be given its probes again: the old one died (or the
      // guest rebooted). A vesperd restart finds the probes still loaded and repushes none.
      return e.payload['agentRestarted'] === true && Array.isArray(e.payload['repushed']) && e.payload['repushed'].length > 0;
    default:
      return FAILURE_KINDS.some((k) => k.plugin === e.plugin && k.event === e.event);
  }
}

/** The (plugin, event) pairs that may be failures; signals and exits are then checked by payload. */
export const FAILURE_KINDS: ReadonlyArray<{ plugin: string; event: string }> = [
  { plugin: 'signal', event: 'signal' },
  { plugin: 'process', event: 'exit' },
  { plugin: 'oom', event: 'oom_kill' },
  { plugin: 'libvirt', event: 'panicked' },
  { plugin: 'libvirt', event: 'crashed' },
  { plugin: 'libvirt', event: 'watchdog' },
  { plugin: 'libvirt', event: 'io-error' },
  { plugin: 'channel', event: 'heartbeat-lost' },
  { plugin: 'channel', event: 'agent-lost' },
  { plugin: 'channel', event: 'agent-connected' },
  { plugin: 'pacemaker', event: 'resource-failed' },
  { plugin: 'pacemaker', event: 'node-lost' },
  { plugin: 'pacemaker', event: 'fencing' },
];
