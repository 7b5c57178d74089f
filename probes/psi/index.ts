import type { ProbeContext, ProbeModule } from '../../contract/probe-api.js';

const probe: ProbeModule = {
  setup(ctx: ProbeContext) {
    const resource = ctx.params['resource'] as string;
    const kind = ctx.params['kind'] as string;
    const thresholdUs = ctx.params['threshold_us'] as number;
    const windowUs = ctx.params['window_us'] as number;
    if (resource !== 'memory' && resource !== 'io' && resource !== 'cpu')
      throw new Error(`resource must be memory, io or cpu, not ${resource}`);
    if (kind !== 'some' && kind !== 'full') throw new Error(`kind must be some or full, not ${kind}`);
    // The kernel's own limits for PSI triggers, kept so a setting means the same either way.
    if (windowUs < 500_000 || windowUs > 10_000_000) throw new Error('window_us must be between 500000 and 10000000');
    if (thresholdUs <= 0 || thresholdUs > windowUs) throw new Error('threshold_us must be > 0 and no more than window_us');
    ctx.pressure({ resource, kind, thresholdUs, windowUs, cgroup: (ctx.params['cgroup'] as string) || undefined }, (s) => {
      ctx.emit('pressure', {
        psi: {
          resource: s.resource,
          kind: s.kind,
          stallUs: s.stallUs,
          windowUs: s.windowUs,
          thresholdUs: s.thresholdUs,
          avg10: s.avg10,
          source: s.source,
        },
      });
    });
  },
};
export default probe;
