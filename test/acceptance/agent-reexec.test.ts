// The agent started without UV_THREADPOOL_SIZE starts itself again with it (guest-agent/main.ts);
// the parent that stays behind is as safe from the OOM killer as the agent it runs.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { projectRoot } from '../helpers/project-root.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { waitFor } from '../helpers/wait.js';
import { AGENT_NODE_FLAGS } from '../../contract/node-flags.js';

const why = whyNoKernelAccess();
if (why) console.warn(`SKIP agent re-exec test: ${why}`);
// Lowering oom_score_adj needs CAP_SYS_RESOURCE, which some sandboxes take even from root (this
// project's CI machine among them; the guest has it, see global-oom.test.ts).
const canProtect = !why && spawnSync('sh', ['-c', 'echo -1000 > /proc/self/oom_score_adj'], { stdio: 'ignore' }).status === 0;
if (!why && !canProtect)
  console.warn('agent re-exec test: root cannot lower oom_score_adj here (no CAP_SYS_RESOURCE); that part is not checked');

const adj = (pid: number): string => readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8').trim();
const children = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);

describe.skipIf(Boolean(why))('the agent started without UV_THREADPOOL_SIZE', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-reexec-'));
  let p: ChildProcess | null = null;
  let agentPid = 0;
  afterAll(async () => {
    if (p && p.exitCode === null) {
      p.kill('SIGTERM');
      await waitFor('agent gone', () => p!.exitCode !== null || p!.signalCode !== null, 10_000).catch(() => p!.kill('SIGKILL'));
    }
    // A parent killed outright leaves its child behind: that one goes too.
    try {
      if (agentPid > 0 && readFileSync(`/proc/${agentPid}/cmdline`, 'utf8').includes('vesper-agent')) process.kill(agentPid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs as a child with the pool set; parent and child both have oom_score_adj -1000 where root may set it', async () => {
    const key = loadOrCreateHostKey(join(dir, 'keys'));
    const pub = join(dir, 'host.pub');
    writeFileSync(pub, key.publicPem);
    const socket = join(dir, 'agent.sock');
    const env = { ...process.env };
    delete env['UV_THREADPOOL_SIZE'];
    p = spawn(
      process.execPath,
      [
        join(projectRoot(), 'dist/guest-agent/vesper-agent.mjs'),
        '--transport',
        `unix:${socket}`,
        '--host-key',
        pub,
        '--state-file',
        join(dir, 'state'),
      ],
      { stdio: 'ignore', env },
    );
    await waitFor('the agent socket', () => existsSync(socket), 15_000);
    const [child] = children(p.pid!);
    expect(child).toBeGreaterThan(0);
    agentPid = child!;
    expect(readFileSync(`/proc/${child}/environ`, 'utf8').split('\0')).toContain('UV_THREADPOOL_SIZE=64');
    // ... and with the agent's node options, which V8 takes at start-up only.
    expect(readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0')).toEqual(expect.arrayContaining([...AGENT_NODE_FLAGS]));
    if (canProtect) {
      expect(adj(p.pid!)).toBe('-1000');
      expect(adj(child!)).toBe('-1000');
    }
  });
});
