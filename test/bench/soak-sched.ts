// Which scheduling of the agent keeps heartbeats on time in a busy guest: one busy-guest soak
// (test/helpers/soak.ts) whose stress window is cut into phases that cycle through the test
// helper's agent-sched modes, so that every mode meets the same guest, stress and host load:
//   main-only  nice -10 on the agent's main thread only (what the agent once did)
//   all        nice -10 on every thread (what protectSelf does now)
//   rr         SCHED_RR 1 on every thread
// Prints the heartbeat delay, the guest timer's share and the transit jitter per mode.
//
//   npx tsx test/bench/soak-sched.ts [--minutes 6] [--phase-s 30]
import { Command } from 'commander';
import { describeSoak, distribution, runSoak, type Beat, type Distribution } from '../helpers/soak.js';
import { sleep } from '../helpers/wait.js';

const MODES = ['main-only', 'all', 'rr'] as const;

const o = new Command('soak-sched')
  .option('--minutes <n>', 'stress window', '6')
  .option('--phase-s <n>', 'seconds per phase', '30')
  .parse(process.argv)
  .opts<{ minutes: string; phaseS: string }>();
const durationS = Math.round(Number(o.minutes) * 60);
const phaseMs = Number(o.phaseS) * 1000;
/** the part of each phase measured: its first second is the switch settling */
const phases: Array<{ mode: string; fromMs: number; toMs: number }> = [];

const r = await runSoak({
  durationS,
  faultEveryS: 5,
  log: (l) => console.error(l),
  during: async (helper, t0) => {
    for (let i = 0; i < 10_000 && (i + 1) * phaseMs <= durationS * 1000; i++) {
      await sleep(Math.max(0, t0 + i * phaseMs - Date.now()));
      const answer = await helper(`agent-sched ${MODES[i % MODES.length]!}`);
      console.error(`soak-sched: ${answer}`);
      phases.push({ mode: MODES[i % MODES.length]!, fromMs: Date.now() - t0 + 1000, toMs: (i + 1) * phaseMs });
    }
  },
});
console.error(describeSoak(r));
const f = (d: Distribution): string => `${d.p50.toFixed(1)} / ${d.p99.toFixed(1)} / ${d.max.toFixed(1)}`;
console.log(
  `heartbeat delay per agent scheduling mode, ms p50 / p99 / max (${r.accel.toUpperCase()}, ${durationS} s, ${phaseMs / 1000} s phases)`,
);
for (const mode of MODES) {
  const beats: Beat[] = r.beats.filter((b) => phases.some((p) => p.mode === mode && b.atMs >= p.fromMs && b.atMs < p.toMs));
  console.log(
    `${mode.padEnd(10)} n=${String(beats.length).padEnd(5)} host ${f(distribution(beats.map((b) => b.delayMs)))}` +
      `   guest timer ${f(distribution(beats.map((b) => b.guestTimerMs)))}   transit jitter ${f(distribution(beats.map((b) => b.jitterMs)))}`,
  );
}
