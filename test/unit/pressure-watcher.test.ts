// The PSI watcher (guest-agent/kernel/pressure.ts) samples at window/10 only while stall time
// is in its window, once per idle period otherwise, and still fires on the trigger's rule.
// A pressure file of its own (same format as /proc/pressure/*), so the counter is the test's.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { PressureWatcher } from '../../guest-agent/kernel/pressure.js';
import type { PsiSample } from '../../contract/probe-api.js';
import { sleep, waitFor } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vesper-psi-'));
const file = join(dir, 'memory.pressure');
const setTotal = (us: number): void =>
  writeFileSync(file, `some avg10=0.00 avg60=0.00 avg300=0.00 total=${us}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n`);

const watchers: PressureWatcher[] = [];
afterEach(() => {
  for (const w of watchers.splice(0)) w.stop();
});

describe('PSI watcher', () => {
  it('idles while the counter stands still, samples fast once it moves, and fires at the threshold', async () => {
    setTotal(1_000_000);
    const fired: PsiSample[] = [];
    // threshold 100 ms in a 1 s window: fast period 100 ms, idle period 1 s
    const w = new PressureWatcher(file, 'memory', 'some', 100_000, 1_000_000, (s) => fired.push(s));
    watchers.push(w);
    expect([w.sampleMs, w.idleMs]).toEqual([100, 1000]);
    w.start();
    await sleep(1300);
    expect(w.fast).toBe(false);
    expect(fired).toEqual([]);
    // 40 ms of stall: below the threshold, but the watcher now samples fast
    setTotal(1_040_000);
    await waitFor('fast sampling', () => w.fast, 2500, 10);
    expect(fired).toEqual([]);
    // 120 ms within the window: fires within one fast period or so
    setTotal(1_120_000);
    const t0 = performance.now();
    await waitFor('the pressure report', () => fired[0], 1000, 5);
    expect(performance.now() - t0).toBeLessThan(400);
    expect(fired[0]).toMatchObject({ resource: 'memory', kind: 'some', thresholdUs: 100_000, windowUs: 1_000_000 });
    expect(fired[0]!.stallUs).toBeGreaterThanOrEqual(100_000);
    // No growth for a window: back to the idle period.
    await waitFor('idle sampling', () => !w.fast, 3000, 20);
    expect(fired).toHaveLength(1);
  }, 15_000);

  it('stops sampling when stopped', async () => {
    setTotal(0);
    const fired: PsiSample[] = [];
    const w = new PressureWatcher(file, 'memory', 'some', 50_000, 500_000, (s) => fired.push(s));
    w.start();
    setTotal(200_000);
    await waitFor('fired', () => fired.length === 1, 2000, 10);
    w.stop();
    setTotal(900_000);
    await sleep(1200);
    expect(fired).toHaveLength(1);
    expect(w.fast).toBe(false);
  }, 10_000);
});

// afterAll, not process 'exit': a vitest worker is a thread that outlives the file
afterAll(() => rmSync(dir, { recursive: true, force: true }));
