import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const interval = ctx.params['interval_ms'] as number;
    if (interval < 10) throw new Error('interval_ms must be at least 10');
    let count = 0;
    let last = ctx.now();
    ctx.every(interval, () => {
      const now = ctx.now();
      const delayMs = Math.max(0, (now - last) / 1e6 - interval);
      last = now;
      ctx.emit('beat', { heartbeat: { count: ++count, intervalMs: interval, delayMs } }, now);
    });
  },
};
export default probe;
