import { readFileSync } from 'node:fs';
import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import { signalNumber } from '../../contract/signals.js';
import { allOf, anyOf } from '../_shared/trace-filter.js';

const TRACE_SIGNAL_IGNORED = 1;

/**
 * Who a sending process is: its parent and its cgroup (which names its systemd unit), read
 * from /proc while it is most likely still there. Only for signals one process sends another
 * (kill(2), rare), never for the kernel's own: two small /proc reads.
 */
function senderOrigin(ctx: ProbeContext, pid: number): { senderParent?: { pid: number; comm: string }; senderCgroup?: string } {
  const out: { senderParent?: { pid: number; comm: string }; senderCgroup?: string } = {};
  const ppid = Number(ctx.procStatus(pid)?.['PPid']);
  if (ppid > 0) out.senderParent = { pid: ppid, comm: ctx.comm(ppid) };
  let text = '';
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return out;
  }
  // cgroup v2: "0::/system.slice/x.service"; v1: the name=systemd hierarchy has the unit.
  const lines = text.split('\n');
  const line = lines.find((l) => l.startsWith('0::')) ?? lines.find((l) => l.includes(':name=systemd:'));
  if (line) out.senderCgroup = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1).slice(0, 4096);
  return out;
}

type SenderOrigin = ReturnType<typeof senderOrigin>;
/**
 * A sender's origin is looked up once per second per pid: a process that sends thousands of
 * signals (a supervisor's storm, kill in a loop) would otherwise cost two /proc reads and a call
 * to the agent's main thread per signal. A pid reused within that second is the only way to
 * get a stale answer.
 */
const ORIGIN_TTL_NS = 1e9;
const ORIGIN_CACHE_MAX = 1024;

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const origins = new Map<number, { ts: number; origin: SenderOrigin }>();
    const originOf = (pid: number, ts: number): SenderOrigin => {
      const hit = origins.get(pid);
      if (hit && ts - hit.ts < ORIGIN_TTL_NS) return hit.origin;
      if (origins.size >= ORIGIN_CACHE_MAX) origins.clear();
      const origin = senderOrigin(ctx, pid);
      origins.set(pid, { ts, origin });
      return origin;
    };
    const sigs = (ctx.params['signals'] as string[]).map(signalNumber);
    const comms = (ctx.params['comms'] as string[]).map((c) => c.slice(0, 15));
    const filter = allOf(
      anyOf('sig', sigs),
      anyOf('comm', comms),
      ctx.params['include_ignored'] ? '' : `result != ${TRACE_SIGNAL_IGNORED}`,
    );
    ctx.trace('signal', 'signal_generate', filter, (ev) => {
      const f = ev.fields;
      const code = f['code'] as number;
      // si_code > 0 is the kernel's own (SEGV_MAPERR, BUS_ADRERR, SI_KERNEL for the OOM
      // killer, ...); <= 0 is a process (SI_USER from kill(2), SI_TKILL, SI_QUEUE, ...).
      // Either way common_pid is the task running when it was raised: the faulting task for
      // a fault, the sender for kill(2).
      ctx.emit(
        'signal',
        {
          signal: {
            sig: f['sig'] as number,
            code,
            errno: f['errno'] as number,
            result: f['result'] as number,
            group: Boolean(f['group']),
            target: { pid: f['pid'] as number, comm: f['comm'] as string },
            sender: { pid: ev.pid, comm: ev.pid === f['pid'] ? (f['comm'] as string) : ctx.comm(ev.pid) },
            senderIsKernel: code > 0,
            ...(code <= 0 && ev.pid !== f['pid'] ? originOf(ev.pid, ev.ts) : {}),
          },
        },
        ev.ts,
      );
    });
  },
};
export default probe;
