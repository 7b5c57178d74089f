import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const spec = (ctx.params['spec'] as string).trim();
    if (!spec) throw new Error('the kprobe probe needs a spec, e.g. spec="__send_signal_locked sig=%di:s32"');
    const symbol = spec.replace(/^[pr]:\S*\s+/, '').split(/\s+/)[0]!;
    const label = (ctx.params['label'] as string) || symbol;
    ctx.kprobe(spec, ctx.params['filter'] as string, (ev) => {
      const fields = [];
      for (const [name, value] of Object.entries(ev.fields)) {
        if (name.startsWith('common_') || name === '__probe_ip') continue;
        fields.push(typeof value === 'string' ? { name, str: value } : value < 0 ? { name, int: value } : { name, uint: value });
      }
      ctx.emit('hit', { kprobe: { name: label, symbol, task: { pid: ev.pid, comm: ctx.comm(ev.pid) }, fields } }, ev.ts);
    });
  },
};
export default probe;
