import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';
import { signalNumber } from '../../contract/signals.js';
import { allOf, anyOf } from '../_shared/trace-filter.js';

const TRACE_SIGNAL_IGNORED = 1;

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
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
          },
        },
        ev.ts,
      );
    });
  },
};
export default probe;
