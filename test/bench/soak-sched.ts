// Which scheduling keeps heartbeats on time in a busy guest: one busy-guest soak
// (test/helpers/soak.ts) whose stress window is cut into phases that cycle through modes, so
// that every mode meets the same guest, stress and host load.
//   --subject agent (default): the test helper's agent-sched modes
//     main-only  nice -10 on the agent's main thread only (what the agent once did)
//     all        nice -10 on every thread (what protectSelf does now)
//     rr         SCHED_RR 1 on every thread
//   --subject vesperd: vesperd's threads on the host at nice 0, then at nice -10
// Prints the heartbeat delay, the guest timer's share and the transit jitter per mode.
//
//   npx tsx test/bench/soak-sched.ts [--subject agent|vesperd] [--minutes 6] [--phase-s 30]
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { setPriority } from 'node:os';
import { Command } from 'commander';
import { describeSoak, distribution, runSoak, type Beat, type Distribution } from '../helpers/soak.js';
import { sleep } from '../helpers/wait.js';

const o = new Command('soak-sched')
  .option('--subject <what>', 'agent (in the guest) or vesperd (on the host)', 'agent')
  .option('--minutes <n>', 'stress window', '6')
  .option('--phase-s <n>', 'seconds per phase', '30')
  .parse(process.argv)
  .opts<{ subject: string; minutes: string; phaseS: string }>();
const MODES = o.subject === 'vesperd' ? ['nice0', 'nice-10'] : ['main-only', 'all', 'rr'];
const durationS = Math.round(Number(o.minutes) * 60);
const phaseMs = Number(o.phaseS) * 1000;
/** the part of each phase measured: its first second is the switch settling */
const phases: Array<{ mode: string; fromMs: number; toMs: number }> = [];

/** Every thread of the soak's vesperd (its config lives in the soak's own directory). */
function reniceVesperd(nice: number): string {
  const pid = Number(execFileSync('pgrep', ['-o', '-f', 'vesper.mjs daemon --config /tmp/vesper-soak-'], { encoding: 'utf8' }).trim());
  let n = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      setPriority(Number(tid), nice);
      n++;
    } catch {
      /* ended */
    }
  }
  return `vesperd ${pid}: ${n} threads at nice ${nice}`;
}

const r = await runSoak({
  durationS,
  faultEveryS: 5,
  log: (l) => console.error(l),
  during: async (helper, t0) => {
    for (let i = 0; i < 10_000 && (i + 1) * phaseMs <= durationS * 1000; i++) {
      await sleep(Math.max(0, t0 + i * phaseMs - Date.now()));
      const mode = MODES[i % MODES.length]!;
      const answer = o.subject === 'vesperd' ? reniceVesperd(mode === 'nice0' ? 0 : -10) : await helper(`agent-sched ${mode}`);
      console.error(`soak-sched: ${answer}`);
      phases.push({ mode, fromMs: Date.now() - t0 + 1000, toMs: (i + 1) * phaseMs });
    }
  },
});
console.error(describeSoak(r));
const f = (d: Distribution): string => `${d.p50.toFixed(1)} / ${d.p99.toFixed(1)} / ${d.max.toFixed(1)}`;
console.log(
  `heartbeat delay per ${o.subject} scheduling mode, ms p50 / p99 / max (${r.accel.toUpperCase()}, ${durationS} s, ${phaseMs / 1000} s phases)`,
);
for (const mode of MODES) {
  const beats: Beat[] = r.beats.filter((b) => phases.some((p) => p.mode === mode && b.atMs >= p.fromMs && b.atMs < p.toMs));
  console.log(
    `${mode.padEnd(10)} n=${String(beats.length).padEnd(5)} host ${f(distribution(beats.map((b) => b.delayMs)))}` +
      `   guest timer ${f(distribution(beats.map((b) => b.guestTimerMs)))}   transit jitter ${f(distribution(beats.map((b) => b.jitterMs)))}` +
      `   vesperd run-queue wait per gap ${f(distribution(beats.map((b) => b.vesperdWaitMs)))}`,
  );
}
