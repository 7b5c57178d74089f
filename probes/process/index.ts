import { readdirSync, readFileSync } from 'node:fs';
import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import { NOT_FATAL_BY_DEFAULT } from '../../contract/signals.js';
import { cgroupOfPid } from '../_shared/cgroup.js';
import { anyOf } from '../_shared/trace-filter.js';
import { TtlCache } from '../_shared/ttl-cache.js';

const CLONE_THREAD = 0x10000;
const CLONE_PARENT = 0x8000; // the child's parent is the caller's parent, not the caller
const SIGKILL = 9;
const STATUS_WAIT_MS = 5; // an exit seen on one CPU before its cause arrives from another
// A process whose threads were sent SIGKILL was already dying of something: its exit_group()
// or a fatal signal, traced on another CPU and perhaps read later. Wait longer for that cause
// than for a plain exit: it is there, and guessing would turn a normal exit into a kill.
const KILLED_WAIT_MS = 50;
const MAP_LIMIT = 200_000;

/** What the probe saw of one process's end, with kernel times (ns) to order it across CPUs. */
export interface Cause {
  /** events before this time (an exec) belong to the program that ran before */
  since?: number;
  code?: number; // from exit_group()
  codeTs?: number;
  generated?: number; // last fatal-by-default signal queued for the process before it died
  generatedTs?: number;
  delivered?: number; // first signal other than SIGKILL delivered with its default (fatal) action
  deliveredTs?: number;
  killedTs?: number; // first SIGKILL delivered: the process was already marked to die
}

export interface ExitStatus {
  exitCode: number;
  signal: number;
  codeKnown: boolean;
}

/**
 * The process's exit status from what was seen, as the kernel decides it: whatever first
 * marked the thread group as exiting wins (do_group_exit() takes the group's code from then
 * on). A SIGKILL delivery is never a cause by itself: the kernel sends it to every other
 * thread once the group is exiting, after an exit_group() (zap_other_threads) as after a
 * fatal signal's fast path (complete_signal), and traces it as a delivery on each thread.
 */
export function exitStatus(c: Cause | undefined): ExitStatus {
  const unknown = { exitCode: 0, signal: 0, codeKnown: false };
  if (!c) return unknown;
  const byCode = { exitCode: c.code ?? 0, signal: 0, codeKnown: true };
  const bySignal = (signal: number): ExitStatus => ({ exitCode: 0, signal, codeKnown: true });
  // A fatal signal dequeued by a thread (a fault, a signal without a handler that missed the
  // fast path) ends the group unless exit_group() came first.
  if (c.delivered !== undefined && (c.code === undefined || c.deliveredTs! <= c.codeTs!)) return bySignal(c.delivered);
  if (c.code !== undefined) {
    // kill -9 marks the group before a thread's exit_group() can: that thread then exits with
    // the group's SIGKILL. Only SIGKILL is sure to have done so: another signal queued
    // before exit_group() may have waited, blocked, for sigwait() (a daemon's clean stop).
    if (c.generated === SIGKILL && c.killedTs !== undefined && c.generatedTs! < c.codeTs!) return bySignal(SIGKILL);
    return byCode;
  }
  // Killed with no exit_group(): by the fatal signal queued last (kill(2)'s fast path shows
  // only SIGKILL deliveries), or by a SIGKILL whose sending was not seen.
  if (c.killedTs !== undefined) return bySignal(c.generated ?? SIGKILL);
  return unknown;
}

/**
 * A parent's comm is read once a second per pid: a shell or a supervisor starting hundreds of
 * programs a second would otherwise cost a third /proc read per exec. A parent that itself
 * execs within that second is the only way to get its old name.
 */
const PARENT_COMM_TTL_NS = 1e9;
const PARENT_COMM_CACHE_MAX = 1024;

/** A process's comm from /proc; '' when it is gone already (its pid is still worth saying). */
function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trimEnd();
  } catch {
    return '';
  }
}

/**
 * Who forked each recent process (child pid -> parent tgid), from task_newtask: an exec is
 * often read after its program has ended and been reaped (a fault right after exec, an agent
 * that a busy machine let fall behind), and then /proc no longer says who its parent was.
 * Two generations of at most FORKS_KEPT each: an exec follows its fork closely, and the
 * oldest half is dropped whole rather than entry by entry.
 */
const FORKS_KEPT = 4096;
class RecentForks {
  private now = new Map<number, number>();
  private before = new Map<number, number>();
  set(child: number, parent: number): void {
    if (this.now.size >= FORKS_KEPT) {
      this.before = this.now;
      this.now = new Map();
    }
    this.now.set(child, parent);
  }
  forget(child: number): void {
    this.now.delete(child);
    this.before.delete(child);
  }
  get(child: number): number | undefined {
    return this.now.get(child) ?? this.before.get(child);
  }
}

/**
 * The parent of a process: from /proc/<pid>/stat while it lives (its comm may hold spaces and
 * parentheses), else from the fork the probe saw.
 */
function parentOf(pid: number, ts: number, comms: TtlCache<string>, forks: RecentForks): { pid: number; comm: string } | undefined {
  let ppid: number;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    ppid = forks.get(pid) ?? 0;
  }
  return ppid > 0 ? { pid: ppid, comm: comms.get(ppid, ts) } : undefined;
}

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const comms = (ctx.params['comms'] as string[]).map((c) => c.slice(0, 15));
    const wantThreads = ctx.params['threads'] as boolean;
    const wantStatus = ctx.params['exit_status'] as boolean;
    // Non-leader threads, tid -> tgid: their exits are not process exits, and a cause seen
    // on one of them (exit_group, a fatal signal) belongs to the whole process.
    const threads = new Map<number, number>();
    const causes = new Map<number, Cause>(); // by tgid
    const causeOf = (tgid: number): Cause => {
      let c = causes.get(tgid);
      if (!c) {
        c = {};
        causes.set(tgid, c);
        bound(causes);
      }
      return c;
    };
    const filenames = new Map<number, string>(); // by pid, from exec
    // Each process's cgroup (which names its systemd unit), by tgid: read at the probe's start and
    // at each exec, inherited at fork. A process systemd starts is put in its unit's cgroup before
    // it runs the unit's program; a move without an exec is rare and not seen here.
    const cgroups = new Map<number, string>();
    const parentComms = new TtlCache<string>(PARENT_COMM_TTL_NS, PARENT_COMM_CACHE_MAX, commOf);
    const forks = new RecentForks();
    const waiting = new Map<number, { timer: NodeJS.Timeout; check: () => void }>();
    const tgidOf = (tid: number): number => threads.get(tid) ?? tid;
    const bound = (m: Map<number, unknown>): void => {
      if (m.size > MAP_LIMIT) m.clear();
    };

    // Threads that exist already (like any process started before the probe).
    try {
      for (const p of readdirSync('/proc')) {
        if (!/^\d+$/.test(p)) continue;
        let tasks: string[] = [];
        try {
          tasks = readdirSync(`/proc/${p}/task`);
        } catch {
          continue;
        }
        for (const t of tasks) if (t !== p) threads.set(Number(t), Number(p));
        const cg = cgroupOfPid(Number(p));
        if (cg) cgroups.set(Number(p), cg);
      }
    } catch {
      /* no /proc: thread exits then look like process exits */
    }

    const execFilter = comms.length ? `(${comms.map((c) => `filename ~ "*/${c.replace(/["\\*]/g, '')}"`).join(' || ')})` : '';
    ctx.trace(
      'sched',
      'sched_process_exec',
      execFilter,
      (ev) => {
        const f = ev.fields;
        const pid = f['pid'] as number;
        const filename = f['filename'] as string;
        filenames.set(pid, filename);
        bound(filenames);
        // A new program: what the old one's threads did while exec tore them down (SIGKILL
        // deliveries from de_thread) says nothing about how this one will end.
        if (wantStatus) causes.set(pid, { since: ev.ts });
        // After exec the kernel names the task after the file (first 15 bytes).
        const comm = filename.slice(filename.lastIndexOf('/') + 1).slice(0, 15);
        const cgroup = cgroupOfPid(pid) || cgroups.get(pid) || '';
        if (cgroup) {
          cgroups.set(pid, cgroup);
          bound(cgroups);
        }
        const parent = parentOf(pid, ev.ts, parentComms, forks);
        ctx.emit(
          'exec',
          {
            exec: {
              task: { pid, comm },
              filename,
              oldPid: f['old_pid'] as number,
              ...(parent ? { parent } : {}),
              ...(cgroup ? { cgroup } : {}),
            },
          },
          ev.ts,
        );
      },
      ['pid', 'old_pid', 'filename'],
    );

    ctx.trace(
      'task',
      'task_newtask',
      '',
      (ev) => {
        const f = ev.fields;
        if ((f['clone_flags'] as number) & CLONE_THREAD) {
          threads.set(f['pid'] as number, tgidOf(ev.pid));
          bound(threads);
        } else {
          const child = f['pid'] as number;
          const parent = tgidOf(ev.pid);
          if ((f['clone_flags'] as number) & CLONE_PARENT) forks.forget(child);
          else forks.set(child, parent);
          const cg = cgroups.get(parent);
          if (cg) {
            cgroups.set(child, cg);
            bound(cgroups);
          }
        }
      },
      ['pid', 'clone_flags'],
    );

    if (wantStatus) {
      const fatalSigs = NOT_FATAL_BY_DEFAULT.map((n) => `sig != ${n}`).join(' && ');
      // Events of one process come from every CPU it ran on and are read per CPU: they are
      // kept with their kernel times, and an event older than the program's exec is ignored.
      const current = (tgid: number, ts: number): Cause | undefined => {
        const c = causeOf(tgid);
        return c.since !== undefined && ts < c.since ? undefined : c;
      };
      // Kernels without CONFIG_FTRACE_SYSCALLS have no syscall events: exits by signal are still
      // told, exit codes are not (said at load).
      const syscalls = ctx.hasTraceEvent('syscalls', 'sys_enter_exit_group', 'error_code');
      if (!syscalls)
        ctx.lacks(
          'no syscalls/sys_enter_exit_group (CONFIG_FTRACE_SYSCALLS off): exit codes are not known, only the signals that end processes',
        );
      if (syscalls)
        ctx.trace(
          'syscalls',
          'sys_enter_exit_group',
          '',
          (ev) => {
            const tgid = tgidOf(ev.pid);
            const c = current(tgid, ev.ts);
            if (!c) return;
            if (c.codeTs === undefined || ev.ts < c.codeTs) {
              c.code = (ev.fields['error_code'] as number) & 0xff;
              c.codeTs = ev.ts;
            }
            waiting.get(tgid)?.check();
          },
          ['error_code'],
        );
      // A fatal signal sent by kill(2) takes the kernel's fast path: the target's threads
      // are sent SIGKILL at once and signal_deliver shows SIGKILL, not the signal that was
      // sent. So remember the last fatal-by-default signal queued for each process before
      // it began to die ...
      ctx.trace(
        'signal',
        'signal_generate',
        `${fatalSigs} && result == 0`,
        (ev) => {
          const tgid = tgidOf(ev.fields['pid'] as number);
          const c = current(tgid, ev.ts);
          if (!c) return;
          const dying = Math.min(c.killedTs ?? Infinity, c.deliveredTs ?? Infinity);
          if (ev.ts < dying && (c.generatedTs === undefined || ev.ts >= c.generatedTs)) {
            c.generated = ev.fields['sig'] as number;
            c.generatedTs = ev.ts;
          }
          waiting.get(tgid)?.check();
        },
        ['pid', 'sig'],
      );
      // ... and what was actually delivered: to a handler (it survived that one) or with
      // the default action (it dies). A SIGKILL delivered with the default action is the
      // kernel tearing down a group that is already exiting (see exitStatus).
      ctx.trace(
        'signal',
        'signal_deliver',
        fatalSigs,
        (ev) => {
          const tgid = tgidOf(ev.pid);
          const c = current(tgid, ev.ts);
          if (!c) return;
          const sig = ev.fields['sig'] as number;
          if ((ev.fields['sa_handler'] as number) !== 0) {
            if (c.generated === sig && ev.ts > c.generatedTs!) c.generated = c.generatedTs = undefined;
            return;
          }
          if (sig === SIGKILL) {
            if (c.killedTs === undefined || ev.ts < c.killedTs) c.killedTs = ev.ts;
          } else if (c.deliveredTs === undefined || ev.ts < c.deliveredTs) {
            c.delivered = sig;
            c.deliveredTs = ev.ts;
          }
          waiting.get(tgid)?.check();
        },
        ['sig', 'sa_handler'],
      );
    }

    ctx.trace(
      'sched',
      'sched_process_exit',
      anyOf('comm', comms),
      (ev) => {
        const f = ev.fields;
        const pid = f['pid'] as number;
        const comm = f['comm'] as string;
        const leaderOf = threads.get(pid);
        const isThread = leaderOf !== undefined;
        if (isThread) threads.delete(pid);
        if (isThread && !wantThreads) return;
        const tgid = isThread ? leaderOf : pid;
        const emit = (): void => {
          const w = waiting.get(pid);
          if (w) {
            clearTimeout(w.timer);
            waiting.delete(pid);
          }
          const c = causes.get(tgid);
          if (!isThread) causes.delete(pid);
          const filename = filenames.get(pid) ?? '';
          filenames.delete(pid);
          const cgroup = cgroups.get(tgid) ?? '';
          if (!isThread) cgroups.delete(pid);
          ctx.emit(
            'exit',
            { exit: { task: { pid, comm }, ...exitStatus(c), filename, thread: isThread, ...(cgroup ? { cgroup } : {}) } },
            ev.ts,
          );
        };
        // Records of one process can come from different CPUs out of order: an exit may be
        // read before its cause. Give the cause a moment to arrive.
        const settled = (): boolean => {
          const c = causes.get(tgid);
          if (!c) return false;
          if (c.code !== undefined || c.delivered !== undefined) return true;
          return c.killedTs !== undefined && c.generated !== undefined;
        };
        if (!wantStatus || isThread || settled()) emit();
        else {
          const w = {
            timer: setTimeout(() => {
              if (causes.get(tgid)?.killedTs === undefined) return emit();
              w.timer = setTimeout(emit, KILLED_WAIT_MS - STATUS_WAIT_MS);
            }, STATUS_WAIT_MS),
            check: () => {
              if (settled()) emit();
            },
          };
          waiting.set(pid, w);
        }
      },
      ['pid', 'comm'],
    );

    if (ctx.params['fork'])
      ctx.trace(
        'sched',
        'sched_process_fork',
        '',
        (ev) => {
          const f = ev.fields;
          const child = f['child_pid'] as number;
          if (threads.has(child)) return;
          ctx.emit(
            'fork',
            {
              fork: {
                parent: { pid: f['parent_pid'] as number, comm: f['parent_comm'] as string },
                child: { pid: child, comm: f['child_comm'] as string },
              },
            },
            ev.ts,
          );
        },
        ['parent_pid', 'parent_comm', 'child_pid', 'child_comm'],
      );
  },
};
export default probe;
