// What systemd did around a failure, from the probes' records alone: which unit a process
// belonged to (its cgroup, /system.slice/x.service), whether systemd started it again (a new
// process exec'd in the same cgroup by PID 1 after the death), which signals systemd itself sent
// (PID 1 in /init.scope), and which came from an administrator's login session
// (/user.slice/.../session-N.scope). Nothing here asks the guest: a guest without systemd simply
// has none of these cgroups, and the verdicts then say what they said before.
import { STOP_SIGNALS } from '../../../contract/signals.js';
import { num, obj, str } from '../payload.js';
import { signalOf, task, unitOfCgroup, type Placed } from '../timeline.js';
import { S, type Draft, type Window } from './window.js';

/** systemd's own cgroup: PID 1 there is the service manager, not an init of another kind. */
export const SYSTEMD_CGROUP = '/init.scope';
/** How long after a death a new process of the unit counts as its restart (RestartSec= and start-up). */
const RESTART_WITHIN_US = 600 * S;
/** How long after a death systemd's signals to the rest of the unit are its clean-up (TimeoutStopSec=). */
const CLEANUP_WITHIN_US = 90 * S;
/** systemd 256+ starts each unit's process through this helper, which then execs the unit's program. */
const EXECUTOR = /\/systemd-executor$/;

/** The signal's sender was systemd itself: PID 1, in /init.scope. */
export function sentBySystemd(p: Placed): boolean {
  const s = signalOf(p.ev);
  if (!s || s.senderIsKernel) return false;
  return num(s.sender['pid']) === 1 && str(obj(p.ev.payload['signal'])['senderCgroup']) === SYSTEMD_CGROUP;
}

/**
 * The sender was a user's service manager (`systemd --user`, in
 * /user.slice/user-N.slice/user@N.service/): it stops what runs under it, its own (sd-pam)
 * helper last, when logind or a shutdown stops user@N.service after the user's last session.
 * Returns "user@N.service", or null.
 */
export function userManagerOf(w: Window, p: Placed): string | null {
  const s = signalOf(p.ev);
  if (!s || s.senderIsKernel || num(s.sender['pid']) === 1 || str(s.sender['comm']) !== 'systemd') return null;
  const tree = /^\/user\.slice\/user-\d+\.slice\/(user@\d+\.service)\//;
  const from = senderCgroupIn(w, p);
  // The manager sends its (sd-pam) helper the last SIGTERM and exits at once, often before its
  // own cgroup could be read, and its exec came before the probes were loaded: a process named
  // systemd, not PID 1, whose cgroup is unknown and that stops something in a user manager's
  // tree is that manager.
  const m = tree.exec(from === '' ? targetCgroupOf(p) : from);
  if (!m) return null;
  // only what runs under that manager: its own tree
  const target = targetCgroupOf(p);
  return target === '' || target.startsWith(m[0]) ? (m[1] as string) : null;
}

/** "session-3.scope" when the cgroup is a login session's (ssh, a console): an administrator's. */
export function sessionOf(cgroup: string): string | null {
  const m = /\/(session-[^/]+\.scope)$/.exec(cgroup);
  return m ? (m[1] as string) : null;
}

/** A service's cgroup (not the root, not systemd's own, not a login session). */
export function isUnitCgroup(cgroup: string): boolean {
  return cgroup !== '' && cgroup !== '/' && cgroup !== SYSTEMD_CGROUP && sessionOf(cgroup) === null && unitOfCgroup(cgroup) !== '';
}

/** The cgroup of a signal's target (the probe reads it for signals one process sends another). */
export function targetCgroupOf(p: Placed): string {
  return str(obj(p.ev.payload['signal'])['targetCgroup']);
}

export function senderCgroupOf(p: Placed): string {
  return str(obj(p.ev.payload['signal'])['senderCgroup']);
}

/**
 * The sender's cgroup: as the signal probe read it, or, when the sender had gone before the probe
 * could read it (a shell's `kill` builtin sends and exits at once), as the process probe knew that
 * pid: its exit just after the signal, else its last exec before it. '' when neither says.
 */
export function senderCgroupIn(w: Window, p: Placed): string {
  const own = senderCgroupOf(p);
  if (own !== '') return own;
  const spid = num(obj(obj(p.ev.payload['signal'])['sender'])['pid']);
  if (!spid) return '';
  const run = runOf(p);
  const pidOf = (q: Placed): number | undefined => num(obj(obj(q.ev.payload['exit'] ?? q.ev.payload['exec'])['task'])['pid']);
  const same = (q: Placed): boolean => runOf(q) === run && pidOf(q) === spid && cgroupOfRecord(q) !== '';
  const exit = w.near('process/exit', p.timeUs, p.timeUs + 5 * S).find(same);
  if (exit) return cgroupOfRecord(exit);
  const execs = w.near('process/exec', p.timeUs - 60 * S, p.timeUs).filter(same);
  return execs.length ? cgroupOfRecord(execs[execs.length - 1]!) : '';
}

/** The cgroup an exit or exec record names. */
export function cgroupOfRecord(p: Placed): string {
  return str(obj(p.ev.payload['exit'] ?? p.ev.payload['exec'])['cgroup']);
}

const runOf = (p: Placed): string => p.ev.source?.agentRun ?? '';

/**
 * The process systemd started in the same cgroup after a death: the first exec there whose parent
 * is PID 1 (systemd-executor's exec is followed to the program it runs). With the dead program's
 * file known, only an exec of that file counts (ExecStopPost= commands run there too).
 */
export function restartOf(
  w: Window,
  cgroup: string,
  deathUs: number,
  run: string,
  filename: string,
): { exec: Placed; execs: Placed[] } | null {
  if (!isUnitCgroup(cgroup)) return null;
  const execs = w
    .near('process/exec', deathUs, deathUs + RESTART_WITHIN_US, true)
    .filter((p) => runOf(p) === run && cgroupOfRecord(p) === cgroup);
  for (const p of execs) {
    const x = obj(p.ev.payload['exec']);
    if (num(obj(x['parent'])['pid']) !== 1) continue;
    const pid = num(obj(x['task'])['pid']);
    const file = str(x['filename']);
    // systemd-executor, then the unit's program in the same process.
    const program = EXECUTOR.test(file)
      ? execs.find(
          (q) =>
            q.timeUs >= p.timeUs &&
            num(obj(obj(q.ev.payload['exec'])['task'])['pid']) === pid &&
            !EXECUTOR.test(str(obj(q.ev.payload['exec'])['filename'])),
        )
      : p;
    if (!program) continue;
    if (filename && str(obj(program.ev.payload['exec'])['filename']) !== filename) continue;
    return { exec: program, execs: program === p ? [p] : [p, program] };
  }
  return null;
}

/** systemd's signals to processes of the cgroup within the clean-up time after a death (KillMode=, OOMPolicy=stop). */
export function cleanupOf(w: Window, cgroup: string, deathUs: number, run: string): Placed[] {
  if (!isUnitCgroup(cgroup)) return [];
  return w
    .near('signal/signal', deathUs - S, deathUs + CLEANUP_WITHIN_US)
    .filter((p) => runOf(p) === run && sentBySystemd(p) && targetCgroupOf(p) === cgroup && STOP_SIGNALS.has(signalOf(p.ev)?.sig ?? 0));
}

/**
 * Puts a death's systemd context on its verdict: the unit, the clean-up signals systemd sent the
 * rest of it, and the restart. Returns the sentence to add to the summary ('' when the process
 * was in no unit).
 */
export function withSystemd(w: Window, d: Draft, o: { cgroup: string; deathUs: number; run: string; filename?: string }): string {
  if (!isUnitCgroup(o.cgroup)) return '';
  const unit = unitOfCgroup(o.cgroup);
  d.details['unit'] = unit;
  d.details['cgroup'] = o.cgroup;
  const cleanup = cleanupOf(w, o.cgroup, o.deathUs, o.run);
  w.claim(d, cleanup);
  // The exits of what systemd stopped are part of the same story.
  const stopped = new Set(cleanup.map((p) => num(signalOf(p.ev)!.target['pid'])));
  w.claim(
    d,
    w
      .near('process/exit', o.deathUs - S, o.deathUs + CLEANUP_WITHIN_US + 10 * S)
      .filter((p) => stopped.has(num(obj(obj(p.ev.payload['exit'])['task'])['pid']))),
  );
  const r = restartOf(w, o.cgroup, o.deathUs, o.run, o.filename ?? '');
  let text = ` It was in ${unit}.`;
  if (cleanup.length) {
    d.details['systemdStopped'] = cleanup.length;
    text = ` It was in ${unit}; systemd then stopped the rest of the unit (${cleanup.length} signal${cleanup.length === 1 ? '' : 's'}).`;
  }
  if (r) {
    const x = obj(r.exec.ev.payload['exec']);
    const afterMs = Math.max(0, Math.round((r.exec.timeUs - o.deathUs) / 1000));
    d.details['restart'] = { by: 'systemd', afterMs, pid: num(obj(x['task'])['pid']) ?? null, filename: str(x['filename']) || null };
    w.claim(d, r.execs);
    text += ` systemd restarted ${unit} ${afterMs} ms later (${task(x['task'])}${str(x['filename']) ? `, ${str(x['filename'])}` : ''}).`;
  } else d.details['restart'] = null;
  return text;
}
