// The vesper agent went away while the guest lived: a new agent run on the same boot (the
// old one died; how, its own records cannot say), or a fatal signal sent to it.
import { FAULT_SIGNALS, STOP_SIGNALS } from '../../../contract/signals.js';
import { num, obj, str } from '../payload.js';
import { signalName, signalOf, task } from '../timeline.js';
import { runBefore, runOfHello, type RunInfo } from './agent-runs.js';
import type { AgentKill } from './signals.js';
import { plannedShutdown } from './stops.js';
import { CHANNEL_SILENCE, S, type Window, clock, draft, secs, type Draft } from './window.js';

/** The agent went away while the guest lived: a new agent run on the same boot, or a signal to it. */
export function agentFaults(w: Window, runs: RunInfo[], out: Draft[], kills: AgentKill[]): void {
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
    if (kill?.planned) {
      // systemd stopped it on request (systemctl restart, an upgrade of the package): no fault.
      d.kind = 'planned-stop';
      d.details['by'] = 'systemd';
      d.summary =
        `The vesper agent (pid ${prev.pid}) was stopped by systemd at ${clock(kill.signal.timeUs)} (a stop job: systemctl restart or stop, an upgrade), ` +
        `planned, not a fault; a new agent (pid ${pid ?? '?'}) connected ${secs(Math.max(0, c.timeUs - lastUs))} later.`;
    }
    out.push(d);
  }
  // A signal to the agent with no new run in the window (yet).
  for (const k of kills) {
    if (w.claimed.has(k.signal.id)) continue;
    const s = signalOf(k.signal.ev)!;
    const shutdown = k.planned ? plannedShutdown(out, k.signal, 1) : null;
    const d = k.planned
      ? draft(
          'planned-stop',
          'service',
          'confident',
          k.signal.timeUs,
          `The vesper agent (pid ${k.run.pid}) was stopped with ${signalName(s.sig)} by systemd at ${clock(k.signal.timeUs)}` +
            (shutdown ? `, as part of the guest's shutdown at ${clock(shutdown.atUs)}` : ' (a stop job: systemctl stop, an upgrade)') +
            ': planned, not a fault.',
          { oldAgentPid: k.run.pid, signal: signalName(s.sig), by: 'systemd' },
        )
      : draft(
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
