// The busy-guest soak as a benchmark (issue 8): stress-ng in the guest for --soak-minutes
// (default 10), heartbeat every 500 ms, the signal and oom probes attached, real faults injected
// meanwhile. What is measured and how is in test/helpers/soak.ts; the 60-second version is
// test/acceptance/soak.test.ts.
import { describeSoak, lateBeats, runSoak } from '../helpers/soak.js';
import { round, type Metrics } from './stats.js';

export async function soakBench(m: Metrics, o: { minutes: number; log: (s: string) => void }): Promise<void> {
  const r = await runSoak({ durationS: Math.round(o.minutes * 60), faultEveryS: 5, log: o.log });
  o.log(describeSoak(r));
  m['soak.minutes'] = round(r.windowS / 60, 2);
  m['soak.accel'] = r.accel;
  m['soak.heartbeats'] = r.heartbeats;
  m['soak.heartbeat_delay_ms.p50'] = round(r.delayMs.p50, 1);
  m['soak.heartbeat_delay_ms.p99'] = round(r.delayMs.p99, 1);
  m['soak.heartbeat_delay_ms.max'] = round(r.delayMs.max, 1);
  m['soak.heartbeat_guest_timer_ms.p99'] = round(r.guestTimerDelayMs.p99, 1);
  m['soak.heartbeat_guest_timer_ms.max'] = round(r.guestTimerDelayMs.max, 1);
  m['soak.heartbeat_transit_jitter_ms.p99'] = round(r.transitJitterMs.p99, 1);
  m['soak.heartbeat_transit_jitter_ms.max'] = round(r.transitJitterMs.max, 1);
  // How much of the window the guest's vCPU and vesperd waited for a host CPU: the host's share.
  m['soak.host_vcpu_runqueue_wait_pct'] = round(r.hostWait.vcpuPct, 1);
  m['soak.host_vesperd_runqueue_wait_pct'] = round(r.hostWait.vesperdPct, 1);
  // Beats >= 50 ms late, and how long the vCPU waited for the host in their gaps (median).
  const late = lateBeats(r);
  m['soak.late_beats'] = late.n;
  m['soak.late_beats_vcpu_wait_ms.p50'] = round(late.vcpuWaitMs.p50, 1);
  m['soak.other_beats_vcpu_wait_ms.p50'] = round(late.otherVcpuWaitMs.p50, 1);
  m['soak.false_agent_lost'] = r.falseAlarms.length;
  m['soak.faults_injected'] = r.faults.length;
  m['soak.faults_refused'] = r.faultErrors.length;
  m['soak.missed_faults'] = r.missed.length;
  m['soak.oom_kills'] = r.oomKills.length;
  m['soak.agent_oom_victim'] = r.agentOomVictim;
  m['soak.agent_restarts'] = r.agentRestarts;
  m['soak.records_lost'] = r.recordsLost;
  m['soak.stress_disk_written_mb'] = round((r.stress['vda_write_kb'] ?? 0) / 1024, 1);
  m['soak.stress_disk_read_mb'] = round((r.stress['vda_read_kb'] ?? 0) / 1024, 1);
}
