// The guard of the agent's own thread (loop-watchdog.ts): a stuck main thread gets the agent
// killed so that its supervisor restarts it; a responsive one is left alone. Real processes.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'main-thread-watchdog-child.ts');

function run(stallMs: number, mode: string): Promise<{ code: number | null; signal: string | null; ms: number; stderr: string }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, String(stallMs), mode], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const kill = setTimeout(() => child.kill('SIGTERM'), 15_000);
    child.on('exit', (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, ms: Date.now() - t0, stderr });
    });
  });
}

describe('main thread watchdog', () => {
  it('kills a process whose main thread is stuck, after the stall and saying why', async () => {
    const r = await run(700, 'spin');
    expect(r.signal).toBe('SIGKILL');
    expect(r.stderr).toContain('main thread is stuck');
  }, 20_000);

  it('leaves a responsive process alone', async () => {
    const r = await run(700, 'idle');
    expect(r).toMatchObject({ code: 0, signal: null });
  }, 20_000);
});
