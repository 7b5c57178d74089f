// Issue 8's split-brain benchmark: test/helpers/split-brain.ts, 100 trials by default.
import { runSplitBrain, whyNoLibvirtd } from '../helpers/split-brain.js';
import { pct, round, type Metrics } from './stats.js';

export async function splitBrainBench(m: Metrics, o: { trials: number; log: (s: string) => void }): Promise<void> {
  const why = whyNoLibvirtd();
  if (why) {
    o.log(`split-brain benchmark skipped: ${why}`);
    return;
  }
  const r = await runSplitBrain({ trials: o.trials, log: o.log });
  const ms = r.trials
    .map((t) => t.failoverMs)
    .filter((x) => x >= 0)
    .sort((a, b) => a - b);
  m['splitbrain.trials'] = r.trials.length;
  m['splitbrain.double_starts'] = r.doubleStarts;
  m['splitbrain.starts_before_fence'] = r.startsBeforeFence;
  m['splitbrain.one_done_one_refused'] = r.trials.filter((t) => t.done === 1 && t.failedCodes.length === 1).length;
  m['splitbrain.refusal_codes'] = [...new Set(r.trials.flatMap((t) => t.failedCodes))].sort().join(',');
  if (ms.length) {
    m['splitbrain.failover_ms.p50'] = round(pct(ms, 50), 0);
    m['splitbrain.failover_ms.max'] = round(ms.at(-1)!, 0);
  }
}
