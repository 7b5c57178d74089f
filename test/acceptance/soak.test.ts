// The busy-guest soak, 60-second version (issue 8; the benchmark runs it for 10 minutes): a real
// guest kept busy by stress-ng (memory, and block I/O on a real disk), vesperd with the heartbeat
// (500 ms), signal and oom probes, and real faults injected meanwhile (test/helpers/soak.ts).
//
// Asserted: no false agent-lost or heartbeat-lost (the guest was only busy), every injected fault
// in the store, the agent never the OOM killer's victim; and that the stress and the faults really
// happened (else the rest proves nothing). The heartbeat delay distribution is printed, not
// asserted beyond what a false alarm would be: a p99 of 100 ms on a 2-CPU host emulating the
// guest in software, shared with other work, is not something a test can promise; the benchmark
// (`npm run bench -- --only soak`) measures it against its targets.
import { describe, expect, it } from 'vitest';
import { describeSoak, HEARTBEAT_INTERVAL_MS, runSoak } from '../helpers/soak.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP soak test: ${why}`);

const DURATION_S = 60;

describe.skipIf(Boolean(why))('busy guest soak', () => {
  it(`${DURATION_S} s of stress-ng with faults: no false alarm, no missed fault, the agent never the OOM victim`, async () => {
    const r = await runSoak({ durationS: DURATION_S, faultEveryS: 4, log: (l) => console.warn(l) });
    console.warn(describeSoak(r));

    // The stress and the faults happened.
    expect(r.stressDir).toBe('/mnt/scratch');
    expect(r.stress['vm'], 'stress-ng vm bogo ops').toBeGreaterThan(0);
    expect(r.stress['hdd'], 'stress-ng hdd bogo ops').toBeGreaterThan(0);
    expect(r.stress['vda_write_kb'], 'kB written to the scratch disk').toBeGreaterThan(16 * 1024);
    expect(r.faultErrors).toEqual([]);
    expect(r.faults.length).toBeGreaterThanOrEqual(10);
    expect(new Set(r.faults.map((f) => f.kind))).toEqual(new Set(['segv', 'crash', 'oom']));

    // What vesper must get right under load.
    expect(r.falseAlarms).toEqual([]);
    expect(r.missed).toEqual([]);
    expect(r.agentOomVictim).toBe(0);
    expect(r.agentRestarts).toBe(0);
    expect(r.oomKills.filter((k) => r.faults.some((f) => f.kind === 'oom' && f.pid === k.pid)).length).toBe(
      r.faults.filter((f) => f.kind === 'oom').length,
    );
    // Heartbeats kept coming (most of those due, and none silent long enough to be lost).
    expect(r.heartbeats).toBeGreaterThan(0.8 * r.heartbeatsExpected);
    expect(r.delayMs.max).toBeLessThan(2 * HEARTBEAT_INTERVAL_MS);
  }, 600_000);
});
