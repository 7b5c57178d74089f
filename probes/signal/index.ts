import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import { signalNumber } from '../../contract/signals.js';
import { cgroupOfPid } from '../_shared/cgroup.js';
import { allOf, anyOf } from '../_shared/trace-filter.js';
import { TtlCache } from '../_shared/ttl-cache.js';

const TRACE_SIGNAL_IGNORED = 1;

interface Origin {
  senderParent?: { pid: number; comm: string };
  senderCgroup?: string;
}

/**
 * Who a sending process is: its parent and its cgroup (which names its systemd unit: PID 1 in
 * /init.scope is systemd itself, a shell in session-N.scope an administrator's), read from /proc
 * while it is most likely still there. Only for signals one process sends another (kill(2),
 * rare), never for the kernel's own: two small /proc reads.
 */
function senderOrigin(ctx: ProbeContext, pid: number): Origin {
  const out: Origin = {};
  const ppid = Number(ctx.procStatus(pid)?.['PPid']);
  if (ppid > 0) out.senderParent = { pid: ppid, comm: ctx.comm(ppid) };
  const cg = cgroupOfPid(pid);
  if (cg) out.senderCgroup = cg;
  return out;
}

type SenderOrigin = ReturnType<typeof senderOrigin>;
interface Signal extends Origin {
  sig: number;
  code: number;
  errno: number;
  result: number;
  group: boolean;
  target: { pid: number; comm: string };
  sender: { pid: number; comm: string };
  senderIsKernel: boolean;
  targetCgroup?: string;
}
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
    const origins = new TtlCache<SenderOrigin>(ORIGIN_TTL_NS, ORIGIN_CACHE_MAX, (pid) => senderOrigin(ctx, pid));
    // The target's cgroup says which unit a stop or a kill was for. Read when the record is made:
    // the target of a kill(2) is most often still there (a SIGKILL's may already be gone).
    // Cached like the sender's: a storm of kills at one target costs one read a second.
    const targets = new TtlCache<string>(ORIGIN_TTL_NS, ORIGIN_CACHE_MAX, cgroupOfPid);
    const sigs = (ctx.params['signals'] as string[]).map(signalNumber);
    const comms = (ctx.params['comms'] as string[]).map((c) => c.slice(0, 15));
    const filter = allOf(
      anyOf('sig', sigs),
      anyOf('comm', comms),
      ctx.params['include_ignored'] ? '' : `result != ${TRACE_SIGNAL_IGNORED}`,
    );
    ctx.trace(
      'signal',
      'signal_generate',
      filter,
      (ev) => {
        const f = ev.fields;
        const code = f['code'] as number;
        const pid = f['pid'] as number;
        // si_code > 0 is the kernel's own (SEGV_MAPERR, BUS_ADRERR, SI_KERNEL for the OOM
        // killer, ...); <= 0 is a process (SI_USER from kill(2), SI_TKILL, SI_QUEUE, ...).
        // Either way common_pid is the task running when it was raised: the faulting task for
        // a fault, the sender for kill(2).
        const signal: Signal = {
          sig: f['sig'] as number,
          code,
          errno: f['errno'] as number,
          result: f['result'] as number,
          group: Boolean(f['group']),
          target: { pid, comm: f['comm'] as string },
          sender: { pid: ev.pid, comm: ev.pid === pid ? (f['comm'] as string) : ctx.comm(ev.pid) },
          senderIsKernel: code > 0,
        };
        // Set one by one, not spread: a record of a kill storm is built tens of thousands of
        // times a second, and spreads cost it a third more agent time per record.
        if (code <= 0 && ev.pid !== pid) {
          const o = origins.get(ev.pid, ev.ts);
          if (o.senderParent) signal.senderParent = o.senderParent;
          if (o.senderCgroup) signal.senderCgroup = o.senderCgroup;
          const cg = targets.get(pid, ev.ts);
          if (cg) signal.targetCgroup = cg;
        }
        ctx.emit('signal', { signal }, ev.ts);
      },
      ['sig', 'code', 'errno', 'result', 'group', 'pid', 'comm'],
    );
  },
};
export default probe;
