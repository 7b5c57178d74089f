// The kernel's OOM killer chose a victim: one verdict per cgroup and burst. The OOM claims its
// consequences (its SIGKILL, the victims' exits, the memory pressure before it), so that these
// are not taken for crashes or kills of their own.
import { SIGNALS, SI_KERNEL } from '../../../contract/signals.js';
import { num, obj, str } from '../payload.js';
import { signalOf, task, type Placed } from '../timeline.js';
import type { VerdictScope } from '../types.js';
import { withSystemd } from './systemd.js';
import { S, type Window, clock, clusters, draft, type Draft } from './window.js';

const KILL = SIGNALS.KILL!;

/** OOM kills, grouped per cgroup and burst, with the kill, the exit and the pressure before. */
export function ooms(w: Window, out: Draft[]): void {
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
      // The victim's unit (its cgroup, else the one whose limit was hit), and what systemd did
      // next: OOMPolicy=stop stops the rest of the unit, Restart= starts it again.
      const exit0 = exits.find((p) => num(obj(obj(p.ev.payload['exit'])['task'])['pid']) === v0.pid);
      const systemd = withSystemd(w, d, {
        cgroup: v0.taskMemcg || cg,
        deathUs: exit0?.timeUs ?? first.timeUs,
        run: first.ev.source?.agentRun ?? '',
        filename: exit0 ? str(obj(exit0.ev.payload['exit'])['filename']) : '',
      });
      d.summary =
        `The OOM killer killed ${v0.pid} (${v0.comm || '?'}), ${Math.round(rss / 1024)} MiB resident${others}, at ${clock(first.timeUs)}: ${where}${trigText}.` +
        systemd +
        pressure +
        (Array.isArray(consumers) ? '' : ' The probe does not list the other consumers of memory.');
      out.push(d);
    }
}
