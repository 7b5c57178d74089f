// PSI: the psi probe's trigger fires when stalled time within its window crosses the
// threshold. Memory stall needs reclaim that waits (swap, refaults); a machine without swap
// may record almost none, so the memory case measures the kernel's own counter and skips,
// saying so, when the kernel saw too little stall to cross the threshold. CPU stall is easy
// to make anywhere and proves the trigger path end to end.
import { execSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { LocalAgent } from '../../host/channel/local-agent.js';
import { readPressure } from '../../guest-agent/kernel/pressure.js';
import { createMemoryCgroup, memoryCgroupWhyNot } from '../helpers/cgroup.js';
import { useLocalAgent } from '../helpers/agent-fixture.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why =
  whyNoKernelAccess() || (readPressure('/proc/pressure/memory', 'some') ? '' : 'kernel without PSI (/proc/pressure/memory missing)');
if (why) console.warn(`SKIP pressure tests: ${why}`);

describe.skipIf(Boolean(why))('host mode: pressure stall triggers', () => {
  const f = useLocalAgent();
  let agent: LocalAgent;
  let client: AgentClient;
  const records = f.records;

  beforeAll(async () => {
    agent = f.agent;
    client = f.client;
  });

  it('fires under CPU pressure (more runnable tasks than CPUs)', async () => {
    const [p] = await client.load(agent.module('psi'), {
      params: { resource: 'cpu', kind: 'some', threshold_us: '50000', window_us: '1000000' },
    });
    const busy: ChildProcess[] = [];
    try {
      const before = readPressure('/proc/pressure/cpu', 'some')!.total;
      for (let i = 0; i < 6; i++) busy.push(spawn('sh', ['-c', 'while :; do :; done']));
      const rec = await waitFor('cpu pressure record', () => records.find((r) => r.kind === 'psi' && r.handle === p!.handle), 10_000);
      const after = readPressure('/proc/pressure/cpu', 'some')!.total;
      expect(rec.raw.psi).toMatchObject({
        resource: 'cpu',
        kind: 'some',
        windowUs: 1000000,
        thresholdUs: 50000,
        source: '/proc/pressure/cpu',
      });
      expect(Number(rec.raw.psi?.stallUs)).toBeGreaterThanOrEqual(50000);
      expect(after - before).toBeGreaterThanOrEqual(50000);
    } finally {
      for (const b of busy) b.kill('SIGKILL');
      await client.unload('psi');
    }
  });

  const noCg = memoryCgroupWhyNot();
  it.skipIf(Boolean(noCg))('fires under memory pressure, or says how little stall the kernel recorded', async (ctx) => {
    const threshold = 5000;
    const [p] = await client.load(agent.module('psi'), {
      params: { resource: 'memory', kind: 'some', threshold_us: String(threshold), window_us: '1000000' },
    });
    const file = join(agent.dir, 'refault.bin');
    execSync(`dd if=/dev/urandom of=${file} bs=1M count=48 status=none`);
    const cg = createMemoryCgroup(32 * 1024 * 1024);
    const before = readPressure('/proc/pressure/memory', 'some')!.total;
    let maxWindow = 0;
    try {
      // Re-reading a file half again as large as the cgroup's limit keeps refaulting pages
      // it just used (workingset refaults count as memory stall); a hog adds anon reclaim.
      cg.run(`for i in $(seq 1 200); do cat ${file} > /dev/null; done`);
      cg.run('exec tail /dev/zero');
      let last = before;
      for (let i = 0; i < 40; i++) {
        await sleep(250);
        if (records.some((r) => r.kind === 'psi' && r.handle === p!.handle)) break;
        const now = readPressure('/proc/pressure/memory', 'some')!.total;
        maxWindow = Math.max(maxWindow, now - last);
        last = now;
      }
    } finally {
      await cg.remove();
    }
    const stalled = readPressure('/proc/pressure/memory', 'some')!.total - before;
    const rec = records.find((r) => r.kind === 'psi' && r.handle === p!.handle);
    await client.unload('psi');
    if (!rec) {
      // The trigger must not miss stall the kernel did record: no 250 ms slice reached the threshold.
      expect(maxWindow).toBeLessThan(threshold);
      console.warn(
        `SKIP memory PSI: the kernel recorded only ${stalled} µs of memory stall in 10 s of thrashing (no swap on this machine); the CPU case covers the trigger path`,
      );
      ctx.skip();
      return;
    }
    expect(rec.raw.psi?.resource).toBe('memory');
    expect(Number(rec.raw.psi?.stallUs)).toBeGreaterThanOrEqual(threshold);
  });
});
