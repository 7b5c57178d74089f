// Deaths by a fatal signal that no signal record explains (the signal probe not attached, or
// the signal not watched, or the agent already stopping): only the process's exit says it
// died, so the verdict is uncertain, and who sent the signal is unknown. A stop signal's death
// while the guest shuts down (the agent said so) is that shutdown's.
import { FATAL_SIGNALS, FAULT_SIGNALS, SIGNALS, STOP_SIGNALS } from '../../../contract/signals.js';
import { num, obj, str } from '../payload.js';
import { signalName, task } from '../timeline.js';
import { duringShutdown } from './stops.js';
import { withSystemd, cgroupOfRecord } from './systemd.js';
import { type Window, clock, draft, type Draft } from './window.js';

/** Exits by a fatal signal left unclaimed once the signal records are explained. */
export function exits(w: Window, out: Draft[]): void {
  for (const p of w.of('process/exit')) {
    if (w.claimed.has(p.id)) continue;
    const x = obj(p.ev.payload['exit']);
    const sig = num(x['signal']) ?? 0;
    if (!sig || !FATAL_SIGNALS.has(sig) || x['thread'] === true) continue;
    const who = task(x['task']);
    const sn = signalName(sig);
    const shutdown = STOP_SIGNALS.has(sig) ? duringShutdown(out, p.timeUs) : null;
    if (shutdown) {
      // The agent said the guest was going down: systemd stops every unit, then kills what is left.
      const d = draft(
        'planned-stop',
        'service',
        'uncertain',
        p.timeUs,
        `${who} died of ${sn} at ${clock(p.timeUs)}, during the guest's shutdown (the agent said systemd was stopping the guest; ` +
          `it stopped at ${clock(shutdown.atUs)}): planned, not a failure. No signal record says who sent it.`,
        { signal: sn, sig, target: x['task'] },
      );
      w.claim(d, [p]);
      out.push(d);
      continue;
    }
    const d =
      FAULT_SIGNALS.has(sig) || sig === SIGNALS.ABRT!
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
    d.summary += withSystemd(w, d, {
      cgroup: cgroupOfRecord(p),
      deathUs: p.timeUs,
      run: p.ev.source?.agentRun ?? '',
      filename: str(x['filename']),
    });
    out.push(d);
  }
}
