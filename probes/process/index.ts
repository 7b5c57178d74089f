import { readdirSync } from 'node:fs';
import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import { NOT_FATAL_BY_DEFAULT } from '../../contract/signals.js';
import { anyOf } from '../_shared/trace-filter.js';

const CLONE_THREAD = 0x10000;
const STATUS_WAIT_MS = 5; // an exit seen on one CPU before its cause arrives from another
const MAP_LIMIT = 200_000;

interface Cause {
  code?: number; // from exit_group()
  generated?: number; // last fatal-by-default signal queued for the process
  delivered?: number; // first signal delivered with its default (fatal) action
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
      }
    } catch {
      /* no /proc: thread exits then look like process exits */
    }

    const execFilter = comms.length ? `(${comms.map((c) => `filename ~ "*/${c.replace(/["\\*]/g, '')}"`).join(' || ')})` : '';
    ctx.trace('sched', 'sched_process_exec', execFilter, (ev) => {
      const f = ev.fields;
      const pid = f['pid'] as number;
      const filename = f['filename'] as string;
      filenames.set(pid, filename);
      bound(filenames);
      // After exec the kernel names the task after the file (first 15 bytes).
      const comm = filename.slice(filename.lastIndexOf('/') + 1).slice(0, 15);
      ctx.emit('exec', { exec: { task: { pid, comm }, filename, oldPid: f['old_pid'] as number } }, ev.ts);
    });

    ctx.trace('task', 'task_newtask', '', (ev) => {
      const f = ev.fields;
      if ((f['clone_flags'] as number) & CLONE_THREAD) {
        threads.set(f['pid'] as number, tgidOf(ev.pid));
        bound(threads);
      }
    });

    if (wantStatus) {
      const fatalSigs = NOT_FATAL_BY_DEFAULT.map((n) => `sig != ${n}`).join(' && ');
      ctx.trace('syscalls', 'sys_enter_exit_group', '', (ev) => {
        const c = causeOf(tgidOf(ev.pid));
        c.code ??= (ev.fields['error_code'] as number) & 0xff;
        waiting.get(tgidOf(ev.pid))?.check();
      });
      // A fatal signal sent by kill(2) takes the kernel's fast path: the target's threads
      // are sent SIGKILL at once and signal_deliver shows SIGKILL, not the signal that was
      // sent. So remember the last fatal-by-default signal queued for each process ...
      ctx.trace('signal', 'signal_generate', `${fatalSigs} && result == 0`, (ev) => {
        const c = causeOf(tgidOf(ev.fields['pid'] as number));
        if (c.delivered === undefined) c.generated = ev.fields['sig'] as number;
      });
      // ... and what was actually delivered: to a handler (it survived that one) or with
      // the default action (it dies). The first default-action delivery is the cause; the
      // SIGKILLs the kernel then sends the other threads are its consequence.
      ctx.trace('signal', 'signal_deliver', fatalSigs, (ev) => {
        const tgid = tgidOf(ev.pid);
        const c = causeOf(tgid);
        const sig = ev.fields['sig'] as number;
        if ((ev.fields['sa_handler'] as number) !== 0) {
          if (c.generated === sig) c.generated = undefined;
          return;
        }
        c.delivered ??= sig;
        waiting.get(tgid)?.check();
      });
    }

    ctx.trace('sched', 'sched_process_exit', anyOf('comm', comms), (ev) => {
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
        let signal = 0;
        if (c?.delivered !== undefined) signal = c.delivered === 9 ? (c.generated ?? 9) : c.delivered;
        const filename = filenames.get(pid) ?? '';
        filenames.delete(pid);
        ctx.emit(
          'exit',
          {
            exit: {
              task: { pid, comm },
              exitCode: signal === 0 ? (c?.code ?? 0) : 0,
              signal,
              codeKnown: signal !== 0 || c?.code !== undefined,
              filename,
              thread: isThread,
            },
          },
          ev.ts,
        );
      };
      // Records of one process can come from different CPUs out of order: an exit may be
      // read before its cause. Give the cause a moment to arrive.
      const settled = (): boolean => {
        const c = causes.get(tgid);
        if (!c) return false;
        if (c.delivered === 9) return c.generated !== undefined;
        return c.delivered !== undefined || c.code !== undefined;
      };
      if (!wantStatus || isThread || settled()) emit();
      else
        waiting.set(pid, {
          timer: setTimeout(emit, STATUS_WAIT_MS),
          check: () => {
            if (settled()) emit();
          },
        });
    });

    if (ctx.params['fork'])
      ctx.trace('sched', 'sched_process_fork', '', (ev) => {
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
      });
  },
};
export default probe;
