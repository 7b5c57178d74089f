// The hostile-guest benchmark: a real vesperd against hostile guests (test/fuzz/hostile-guest.ts)
// for at least 100,000 fast-check cases, with well-behaved guests alongside.
import { runHostileFuzz } from '../fuzz/hostile-guest.js';
import { round, type Metrics } from './stats.js';

export async function fuzzBench(m: Metrics, o: { cases: number; log: (s: string) => void }): Promise<void> {
  const r = await runHostileFuzz({ cases: o.cases, hostile: 8, good: 4, goodRate: 100, baselineS: 5, log: o.log });
  if (r.failure) o.log(`fuzz: a property failed:\n${r.failure}`);
  for (const c of r.crashLogs) o.log(`fuzz: ${c}`);
  m['fuzz.cases'] = r.cases;
  m['fuzz.seed'] = r.seed;
  m['fuzz.host_crashes'] = r.hostCrashes;
  m['fuzz.max_session_rss_mb'] = round(r.maxSessionRssMb, 2);
  m['fuzz.good_p99_ms.without_hostile'] = round(r.goodP99BaselineMs, 2);
  m['fuzz.good_p99_ms.with_hostile'] = round(r.goodP99HostileMs, 2);
  m['fuzz.good_p50_ms.without_hostile'] = round(r.goodP50BaselineMs, 2);
  m['fuzz.good_p50_ms.with_hostile'] = round(r.goodP50HostileMs, 2);
  m['fuzz.good_disconnects'] = r.goodDisconnects;
  m['fuzz.max_log_lines_per_vm_s'] = r.maxLogLinesPerVmSecond;
  m['fuzz.rows_under_other_vm'] = r.foreignRows;
  m['fuzz.rows_stored_twice'] = r.duplicateRows;
  m['fuzz.forged_host_rows'] = r.forgedHostRows;
  m['fuzz.hostile_connections'] = r.hostileConnections;
  m['fuzz.hostile_events_read_back'] = r.hostileEventsRead;
  m['fuzz.wall_s'] = round(r.wallS, 1);
}
