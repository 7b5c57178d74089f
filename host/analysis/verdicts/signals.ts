// Fatal signals the signal probe recorded: a fault of the process's own (app-crash), a kill by
// the kernel or another process (app-killed), or a stop that was part of the guest's planned
// shutdown (planned-stop). Who sent it vesper can say; why another process did, it cannot.
// Signals to the vesper agent itself are handed on to agentFaults.
import { FATAL_SIGNALS, FAULT_CODES, FAULT_SIGNALS, SIGNALS, SI_KERNEL, STOP_SIGNALS } from '../../../contract/signals.js';
import { num, obj, str, type Obj } from '../payload.js';
import { senderOriginOf, signalName, signalOf, task, unitOfCgroup, type Placed } from '../timeline.js';
import type { VerdictConfidence, VerdictKind, VerdictScope } from '../types.js';
import type { RunInfo } from './agent-runs.js';
import { duringShutdown, plannedShutdown } from './stops.js';
import {
  cgroupOfRecord,
  isUnitCgroup,
  senderCgroupIn,
  senderCgroupOf,
  sentBySystemd,
  sessionOf,
  targetCgroupOf,
  userManagerOf,
  withSystemd,
} from './systemd.js';
import { S, type Window, clock, draft, type Draft } from './window.js';

const ABRT = SIGNALS.ABRT!;
const KILL = SIGNALS.KILL!;

/** A fatal signal to a vesper agent of the same boot: the agent's fault, not a service's. */
export interface AgentKill {
  signal: Placed;
  run: RunInfo;
  /** systemd stopped it (a stop job: reboot, upgrade, systemctl stop or restart) */
  planned?: boolean;
}

/** "1234 (pkill), child of 1000 (bash), in unit session-3.scope": who sent a signal, as far as known. */
function senderText(p: Placed): string {
  const s = signalOf(p.ev)!;
  const o = senderOriginOf(p.ev);
  const extra: string[] = [];
  if (sentBySystemd(p)) extra.push('systemd');
  else if (num(s.sender['pid']) === 1) extra.push('the service manager');
  if (o.parent) extra.push(`child of ${task(o.parent)}`);
  if (o.unit && !sentBySystemd(p)) extra.push(`in unit ${o.unit}`);
  else if (o.cgroup) extra.push(`in cgroup ${o.cgroup}`);
  return `${task(s.sender)}${extra.length ? ` (${extra.join(', ')})` : ''}`;
}

/** Fatal signals: a fault, another process, the process itself. Signals to the agent are kept for agentFaults. */
export function signals(w: Window, runs: RunInfo[], out: Draft[], agentKills: AgentKill[]): void {
  const agentPids = new Map<number, RunInfo>();
  for (const r of runs) if (r.pid) agentPids.set(r.pid, r);
  // Per target: a SIGTERM and the SIGKILL that follows it are one stop.
  const pending = new Map<string, Draft>();
  // Per agent run and cgroup: the planned stop of a unit, which its later signals join.
  const unitStops = new Map<string, Draft>();
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
      agentKills.push({ signal: p, run: agent, planned: STOP_SIGNALS.has(s.sig) && sentBySystemd(p) });
      continue;
    }
    const run0 = p.ev.source?.agentRun ?? '';
    const cgroup = targetCgroupOf(p) || (exit ? cgroupOfRecord(exit) : '');
    const unit = isUnitCgroup(cgroup) ? unitOfCgroup(cgroup) : '';
    // A stop systemd was asked for, already told as a stop of this unit: one verdict for the unit.
    const unitStop = unit ? unitStops.get(`${run0}:${cgroup}`) : undefined;
    if (unitStop && p.timeUs - unitStop.atUs <= 30 * S && (sentBySystemd(p) || senderCgroupOf(p) === cgroup)) {
      w.claim(unitStop, [p, ...(exit ? [exit] : [])]);
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
    let control: Placed | null = null;
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
      const userManager = STOP_SIGNALS.has(s.sig) ? userManagerOf(w, p) : null;
      // a user's service manager stops what it runs as the guest shuts down, as PID 1 does
      // ... and once the agent has said the guest is going down, whoever sent a stop signal
      const shutdown = STOP_SIGNALS.has(s.sig) ? (plannedShutdown(out, p, userManager ? 1 : spid) ?? duringShutdown(out, p.timeUs)) : null;
      const byControl = STOP_SIGNALS.has(s.sig) && !shutdown ? controlCommand(w, p, cgroup) : null;
      const session = sessionOf(senderCgroupIn(w, p));
      if (!shutdown && STOP_SIGNALS.has(s.sig) && sentBySystemd(p)) {
        // systemd sends a stop signal of its own accord only for a stop job (systemctl stop or
        // restart, a unit that depends on it, a shutdown) or to clean up after a death (claimed
        // with that death, earlier in this pass).
        kind = 'planned-stop';
        summary =
          `${who} was stopped with ${sn} by systemd (PID 1) at ${clock(p.timeUs)}: a stop job for ${unit || 'its unit'} ` +
          '(systemctl stop or restart, or a unit it depends on), planned, not a failure.' +
          fate;
      } else if (userManager && !shutdown) {
        kind = 'planned-stop';
        summary =
          `${who} was stopped with ${sn} by ${task(s.sender)}, the service manager of ${userManager}, at ${clock(p.timeUs)}: ` +
          `it stops what runs under it when ${userManager} stops (the user's last session ended), planned, not a failure.${fate}`;
      } else if (byControl) {
        kind = 'planned-stop';
        control = byControl;
        summary =
          `${who} was stopped with ${sn} by ${task(s.sender)}, a command systemd ran for ${unit} (its ExecStop=), at ${clock(p.timeUs)}: ` +
          `a stop job (systemctl stop or restart), planned, not a failure.${fate}`;
      } else if (shutdown) {
        kind = 'planned-stop';
        summary =
          `${who} was stopped with ${sn} by ${from} at ${clock(p.timeUs)}, as part of the guest's shutdown at ${clock(shutdown.atUs)}: ` +
          `planned, not a failure.${fate}`;
      } else if (session) {
        kind = 'app-killed';
        summary =
          `${who} was sent ${sn} by ${from} at ${clock(p.timeUs)}: an administrator's command from the login session ${session} (not systemd), ` +
          `not a fault of its own. vesper cannot tell whether that was planned or a mistake.${fate}`;
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
      const o = senderOriginOf(p.ev);
      details['senderParent'] = o.parent;
      details['senderCgroup'] = o.cgroup ?? (senderCgroupIn(w, p) || null);
      details['senderUnit'] = o.unit;
      details['by'] = sentBySystemd(p) ? 'systemd' : sessionOf(senderCgroupIn(w, p)) ? 'administrator' : null;
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
    if (control) w.claim(d, [control]);
    if (kind === 'planned-stop') {
      if (unit) {
        d.details['unit'] = unit;
        d.details['cgroup'] = cgroup;
        unitStops.set(`${run0}:${cgroup}`, d);
      }
    } else if (exit && diedOf) {
      // It died: what systemd did next (the rest of its unit stopped, a restart).
      d.summary += withSystemd(w, d, { cgroup, deathUs: exit.timeUs, run: run0, filename: str(obj(exit.ev.payload['exit'])['filename']) });
    } else if (unit) {
      d.details['unit'] = unit;
      d.details['cgroup'] = cgroup;
    }
    pending.set(key, d);
    out.push(d);
  }
}

/**
 * The command systemd ran to stop the target's unit (ExecStop=, like Debian nginx's
 * start-stop-daemon --stop): the sender is in the target's unit, a child of PID 1, and its
 * exec was seen shortly before the signal. A unit's main process (also PID 1's child, in the
 * same cgroup) signalling its workers was exec'd long before, at the unit's start.
 */
function controlCommand(w: Window, p: Placed, cgroup: string): Placed | null {
  if (!isUnitCgroup(cgroup) || senderCgroupOf(p) !== cgroup) return null;
  const o = senderOriginOf(p.ev);
  if (num(o.parent?.['pid']) !== 1) return null;
  const spid = num(signalOf(p.ev)!.sender['pid']);
  const run = p.ev.source?.agentRun ?? '';
  return (
    w
      .near('process/exec', p.timeUs - 30 * S, p.timeUs, true)
      .filter((x) => x.ev.source?.agentRun === run)
      .find(
        (x) => num(obj(obj(x.ev.payload['exec'])['task'])['pid']) === spid && num(obj(obj(x.ev.payload['exec'])['parent'])['pid']) === 1,
      ) ?? null
  );
}
