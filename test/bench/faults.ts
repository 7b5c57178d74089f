// Issue 8's faults benchmark: test/helpers/faults.ts, each kind in turn at a random moment of
// a storm, `trials` in all, then the whole store checked.
import { FAULT_KINDS, FaultRig, type FaultTrial } from '../helpers/faults.js';
import { whyNoLibvirtd } from '../helpers/split-brain.js';
import { pct, round, type Metrics } from './stats.js';

export async function faultsBench(m: Metrics, o: { trials: number; log: (s: string) => void }): Promise<void> {
  const why = whyNoLibvirtd();
  if (why) {
    o.log(`faults benchmark skipped: ${why}`);
    return;
  }
  const f = await FaultRig.start(o.log);
  const trials: FaultTrial[] = [];
  try {
    for (let i = 0; i < o.trials; i++) {
      const kind = FAULT_KINDS[i % FAULT_KINDS.length]!;
      trials.push(await f.trial(kind, { records: 20_000, rate: 4000, atMs: 500 + Math.floor(Math.random() * 4000) }));
    }
    const c = f.checkStore();
    const rec = trials.map((t) => t.recoveredMs).sort((a, b) => a - b);
    m['faults.trials'] = trials.length;
    m['faults.kinds'] = [...new Set(trials.map((t) => t.kind))].join(',');
    m['faults.acked_records_lost'] = c.unexplained;
    m['faults.records_stored_twice'] = c.duplicates;
    m['faults.ended_runs_misreported'] = c.endedRunsMisreported;
    m['faults.records_reported_lost'] = c.reportedLost;
    m['faults.records_stored'] = c.records;
    m['faults.recovered_ms.p50'] = round(pct(rec, 50), 0);
    m['faults.recovered_ms.max'] = round(rec.at(-1) ?? NaN, 0);
    for (const k of FAULT_KINDS) {
      const r = trials.filter((t) => t.kind === k).map((t) => t.recoveredMs);
      if (r.length) m[`faults.${k}.recovered_ms.max`] = Math.max(...r);
    }
  } finally {
    await f.stop();
  }
}
