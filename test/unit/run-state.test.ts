// The agent's run-state file: what a restarted agent learns of its predecessors.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RunState } from '../../guest-agent/ring/run-state.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function file(): string {
  const d = mkdtempSync(join(tmpdir(), 'vesper-runstate-'));
  dirs.push(d);
  return join(d, 'sub', 'run-state');
}
/** a pid that no process has: one that just exited */
function deadPid(): number {
  return spawnSync('true').pid;
}

describe('RunState', () => {
  it('reports the run before it, with the last seq it numbered', () => {
    const f = file();
    const dead = deadPid();
    const a = new RunState(f, 'boot-1', dead);
    a.note(41);
    a.note(42);
    a.close();
    const b = new RunState(f, 'boot-1', process.pid);
    expect(b.ended).toEqual([{ bootId: 'boot-1', agentPid: dead, lastSeq: 42 }]);
    b.close();
  });

  it('keeps earlier runs until there are eight, newest first', () => {
    const f = file();
    const pids: number[] = [];
    for (let i = 0; i < 10; i++) {
      const pid = deadPid();
      pids.push(pid);
      const s = new RunState(f, 'boot-1', pid);
      s.note(100 + i);
      s.close();
    }
    const last = new RunState(f, 'boot-1', process.pid);
    expect(last.ended).toHaveLength(8);
    expect(last.ended[0]).toEqual({ bootId: 'boot-1', agentPid: pids[9], lastSeq: 109 });
    expect(last.ended[7]!.lastSeq).toBe(102);
    last.close();
  });

  it("forgets another boot's runs", () => {
    const f = file();
    const a = new RunState(f, 'boot-1', deadPid());
    a.note(5);
    a.close();
    expect(new RunState(f, 'boot-2', process.pid).ended).toEqual([]);
  });

  it('a run whose agent still lives has not ended; a reused pid of another program has', async () => {
    const f = file();
    // argv[0] "vesper-agent": what a live agent's /proc/PID/cmdline shows
    const agent = spawn('bash', ['-c', 'exec -a vesper-agent sleep 30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      const a = new RunState(f, 'boot-1', agent.pid);
      a.note(7);
      a.close();
      expect(new RunState(f, 'boot-1', deadPid()).ended).toEqual([]);
    } finally {
      agent.kill('SIGKILL');
    }
    // this test process lives, but it is no agent: its pid was "reused"
    const g = file();
    const b = new RunState(g, 'boot-1', process.pid);
    b.note(9);
    b.close();
    expect(new RunState(g, 'boot-1', deadPid()).ended).toEqual([{ bootId: 'boot-1', agentPid: process.pid, lastSeq: 9 }]);
  });

  it('rewrites only its own line, in place, at a fixed width', () => {
    const f = file();
    const s = new RunState(f, 'boot-1', process.pid);
    s.note(1);
    const size1 = readFileSync(f).length;
    s.note(123456789);
    expect(readFileSync(f).length).toBe(size1);
    expect(readFileSync(f, 'latin1')).toContain(`pid=${process.pid} last=123456789`);
    s.close();
  });
});
