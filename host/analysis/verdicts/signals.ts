// Fatal signals the signal probe recorded: a fault of the process's own (app-crash), a kill by
// the kernel or another process (app-killed), or a stop that was part of the guest's planned
// shutdown (planned-stop). Who sent it vesper can say; why another process did, it cannot.
// Signals to the vesper agent itself are handed on to agentFaults.
import { FATAL_SIGNALS, FAULT_CODES, FAULT_SIGNALS, SIGNALS, SI_KERNEL, STOP_SIGNALS } from '../../../contract/signals.js';
import { num, obj, type Obj } from '../payload.js';
import { senderOriginOf, signalName, signalOf, task, type Placed } from '../timeline.js';
import type { VerdictConfidence, VerdictKind, VerdictScope } from '../types.js';
import type { RunInfo } from './agent-runs.js';
import { plannedShutdown } from './stops.js';
import { S, type Window, clock, draft, type Draft } from './window.js';

const ABRT = SIGNALS.ABRT!;
const KILL = SIGNALS.KILL!;

/** A fatal signal to a vesper agent of the same boot: the agent's fault, not a service's. */
export interface AgentKill {
  signal: Placed;
  run: RunInfo;
}

/** "1234 (pkill), child of 1000 (bash), in unit session-3.scope": who sent a signal, as far as known. */
function senderText(p: Placed): string {
  const s = signalOf(p.ev)!;
  const o = senderOriginOf(p.ev);
  const extra: string[] = [];
  if (num(s.sender['pid']) === 1) extra.push('the service manager');
  if (o.parent) extra.push(`child of ${task(o.parent)}`);
  if (o.unit) extra.push(`in unit ${o.unit}`);
  else if (o.cgroup) extra.push(`in cgroup ${o.cgroup}`);
  return `${task(s.sender)}${extra.length ? ` (${extra.join(', ')})` : ''}`;
}

/** Fatal signals: a fault, another process, the process itself. Signals to the agent are kept for agentFaults. */
export function signals(w: Window, runs: RunInfo[], out: Draft[], agentKills: AgentKill[]): void {
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
      const o = senderOriginOf(p.ev);
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
}
