import type { pb } from '../../proto/codec.js';
import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';

// The kernel's OOM report in /dev/kmsg (mm/oom_kill.c):
//   "<comm> invoked oom-killer: gfp_mask=..., order=0, oom_score_adj=0"
//   "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/x,task_memcg=/x,task=hog,pid=123,uid=0"
//   "Memory cgroup out of memory: Killed process 123 (hog) total-vm:...kB, anon-rss:...kB, file-rss:...kB, shmem-rss:...kB, UID:0 pgtables:...kB oom_score_adj:0"
const KILLED =
  /Killed process (\d+) \((.*)\) total-vm:(\d+)kB, anon-rss:(\d+)kB, file-rss:(\d+)kB, shmem-rss:(\d+)kB, UID:(\d+) pgtables:(\d+)kB oom_score_adj:(-?\d+)/;
const SUMMARY = /^oom-kill:(.*)$/;
const INVOKED = /^(.*) invoked oom-killer:/;
// memory.oom.group (mm/memcontrol.c): printed after the chosen victim's "Killed process" line,
// before the kernel kills every other task of that cgroup (a mark_victim and a "Killed
// process" line each, but no summary of their own).
/** The group's kills are printed in one go; a later "Killed process" line is another OOM's. */
const GROUP_KILL_NS = 1e9;
const GROUP = /^Tasks in (.*) are going to be killed due to memory\.oom\.group set$/;
/** What every line above contains: the agent hands this probe no other kernel log line. */
const KMSG_MATCH = [' invoked oom-killer:', 'oom-kill:', 'Killed process ', 'memory.oom.group'];

interface Pending {
  oom: pb.IOomEvent;
  ts: number;
  timer: NodeJS.Timeout | null;
}

/** OOM reports kept while they wait for their trace event */
const SUMMARIES_KEPT = 64;

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const wait = ctx.params['detail_wait_ms'] as number;
    const pending = new Map<number, Pending>();
    const summaries = new Map<number, Record<string, string>>(); // by victim pid
    const killed = new Map<number, RegExpExecArray>();
    let lastInvoker = '';
    let lastSummary: Record<string, string> | null = null;
    // The group being killed by memory.oom.group, with the summary of the kill that chose it.
    let group: { cgroup: string; summary: Record<string, string> | null; ts: number } | null = null;
    const killedAt = new Map<number, number>(); // kernel time of each "Killed process" line

    const send = (pid: number): void => {
      const p = pending.get(pid);
      if (!p) return;
      pending.delete(pid);
      if (p.timer) clearTimeout(p.timer);
      const k = killed.get(pid);
      const s = summaries.get(pid);
      const killedTs = killedAt.get(pid) ?? Infinity;
      killed.delete(pid);
      killedAt.delete(pid);
      summaries.delete(pid);
      const o = p.oom;
      if (k) {
        o.victim = { pid, comm: k[2]! };
        o.totalVmKb = Number(k[3]);
        o.anonRssKb = Number(k[4]);
        o.fileRssKb = Number(k[5]);
        o.shmemRssKb = Number(k[6]);
        o.uid = Number(k[7]);
        o.pgtablesKb = Number(k[8]);
        o.oomScoreAdj = Number(k[9]);
        o.figuresComplete = true;
      }
      if (s) {
        o.constraint = s['constraint'] ?? '';
        o.memcg = s['oom_memcg'] ?? '';
        o.taskMemcg = s['task_memcg'] ?? '';
      } else if (group && k && killedTs - group.ts < GROUP_KILL_NS) {
        // A member of an oom.group kill: its "Killed process" line followed the group's.
        o.oomGroup = group.cgroup;
        o.constraint = group.summary?.['constraint'] ?? '';
        o.memcg = group.summary?.['oom_memcg'] ?? '';
      }
      ctx.emit('oom_kill', { oom: o }, p.ts);
    };

    // What this kernel's mark_victim lacks and where it comes from instead, said at load.
    const figures = ctx.hasTraceEvent('oom', 'mark_victim', 'total_vm');
    if (!ctx.capabilities.kmsg)
      ctx.lacks(
        figures
          ? 'no readable /dev/kmsg: OOM records carry no constraint and no cgroups of the OOM report'
          : 'no readable /dev/kmsg, and no memory figures in oom/mark_victim (they came in Linux 6.8): OOM records carry the victim only',
      );
    else if (!figures)
      ctx.lacks("no memory figures in oom/mark_victim (they came in Linux 6.8): they are read from the kernel log's OOM report");

    ctx.trace(
      'oom',
      'mark_victim',
      '',
      (ev) => {
        const f = ev.fields;
        const pid = f['pid'] as number;
        const oom: pb.IOomEvent = {
          victim: { pid, comm: (f['comm'] as string | undefined) ?? ctx.comm(pid) },
          trigger: { pid: ev.pid, comm: lastInvoker || ctx.comm(ev.pid) },
        };
        // Newer kernels (6.8 on) carry the figures, in kB, in the event itself.
        if (f['total_vm'] !== undefined) {
          oom.totalVmKb = f['total_vm'] as number;
          oom.anonRssKb = f['anon_rss'] as number;
          oom.fileRssKb = f['file_rss'] as number;
          oom.shmemRssKb = f['shmem_rss'] as number;
          oom.uid = f['uid'] as number;
          oom.pgtablesKb = f['pgtables'] as number;
          oom.oomScoreAdj = f['oom_score_adj'] as number;
          oom.figuresComplete = true;
        }
        const p: Pending = { oom, ts: ev.ts, timer: null };
        pending.set(pid, p);
        if (!ctx.capabilities.kmsg || killed.has(pid)) return send(pid);
        // The report is printed before the trace event fires, but the kernel log is read one line
        // per read and trails the trace reader: after a guest-wide OOM (the memory dump and the
        // task list come first) the report's summary arrived 140 ms after mark_victim in a TCG
        // guest, and a 50 ms wait sent the record without constraint and cgroups. The record
        // leaves when the report's "Killed process" line is read; this is only the bound.
        p.timer = setTimeout(() => send(pid), wait);
      },
      ['pid'],
    );

    if (ctx.capabilities.kmsg)
      ctx.kmsg(
        (line) => {
          const t = line.text;
          let m = INVOKED.exec(t);
          if (m) {
            lastInvoker = m[1]!;
            lastSummary = null;
            group = null;
            return;
          }
          m = GROUP.exec(t);
          if (m) {
            group = { cgroup: m[1]!, summary: lastSummary, ts: line.ts };
            return;
          }
          m = SUMMARY.exec(t);
          if (m) {
            const kv: Record<string, string> = {};
            for (const part of m[1]!.split(',')) {
              const i = part.indexOf('=');
              if (i > 0) kv[part.slice(0, i)] = part.slice(i + 1);
            }
            const pid = Number(kv['pid']);
            if (pid) {
              // Reports that never matched a trace event (another agent's kill, a lost event)
              // age out here, oldest first: no timer wakes the probe to sweep them.
              if (summaries.size >= SUMMARIES_KEPT) summaries.delete(summaries.keys().next().value!);
              summaries.set(pid, kv);
            }
            lastSummary = kv;
            group = null;
            return;
          }
          m = KILLED.exec(t);
          if (m) {
            const pid = Number(m[1]);
            killed.set(pid, m);
            killedAt.set(pid, line.ts);
            if (pending.has(pid)) send(pid);
            if (killed.size > 64) killed.delete(killed.keys().next().value!);
            if (killedAt.size > 64) killedAt.delete(killedAt.keys().next().value!);
          }
        },
        { match: KMSG_MATCH },
      );

    for (const cg of ctx.params['cgroups'] as string[])
      ctx.memoryEvents(cg, (delta) => {
        ctx.emit('memory_events', {
          generic: {
            fields: [{ name: 'cgroup', str: cg }, ...Object.entries(delta).map(([name, v]) => ({ name, int: v }))],
          },
        });
      });
  },
};
export default probe;
