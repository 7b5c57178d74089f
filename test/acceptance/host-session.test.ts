// GuestSession on a host-mode agent: the link comes back by itself, probes are pushed again
// to an agent that restarted, and a silent agent is told as heartbeat loss.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../proto/record.js';
import { GuestSession, type ConnectedInfo } from '../../host/channel/guest-session.js';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();

describe.skipIf(Boolean(why))('guest session: reconnect, re-push, heartbeat loss', () => {
  const agent = new LocalAgent();
  let session: GuestSession | undefined;
  afterAll(async () => {
    session?.stop();
    await agent.stop();
  });

  it('re-pushes the probes it had to a restarted agent and keeps receiving', async () => {
    await agent.start();
    session = new GuestSession({ socket: agent.socket, module: (n) => agent.module(n), maxBackoffMs: 500 });
    const records: AgentRecord[] = [];
    const connected: ConnectedInfo[] = [];
    const lost: number[] = [];
    session.on('record', (r) => records.push(r));
    session.on('connected', (i) => connected.push(i));
    session.on('heartbeat-lost', (i) => lost.push(i.silentMs));
    session.start();
    await session.waitConnected(10_000);
    await session.attach({ name: 'signal', params: { signals: 'SEGV', comms: 'segv' } });
    await session.attach({ name: 'heartbeat', params: { interval_ms: '200' } });
    await waitFor('a heartbeat', () => records.some((r) => r.kind === 'heartbeat'));

    // The agent dies hard; nobody beats; then a new agent comes up on the same socket.
    agent.proc!.kill('SIGKILL');
    await waitFor('heartbeat loss', () => lost.length > 0, 5000);
    expect(lost[0]).toBeGreaterThanOrEqual(600);
    await agent.start();
    await waitFor('second link', () => connected.length >= 2, 15_000);
    expect(connected[1]!.agentRestarted).toBe(true);
    expect(connected[1]!.repushed.sort()).toEqual(['heartbeat', 'signal']);
    const list = await session.client!.list();
    expect(list.map((p) => [p.name, p.params['comms'] ?? p.params['interval_ms']]).sort()).toEqual([
      ['heartbeat', '200'],
      ['signal', 'segv'],
    ]);
    const before = records.length;
    const r = spawnSync(writeProgram(join(agent.dir, 'segv'), segfaultProgram()));
    const rec = await waitFor('SIGSEGV after the restart', () =>
      records.slice(before).find((x) => x.kind === 'signal' && x.raw.signal?.target?.pid === r.pid),
    );
    expect(rec.seq).toBeGreaterThan(0);
    await sleep(50);
  });

  it("an agent told to stop (SIGTERM) says so in its run's last record, with systemd's state, before the link closes", async () => {
    const records: AgentRecord[] = [];
    session!.on('record', (r) => records.push(r));
    const p = agent.proc!;
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    expect(await exited).toBe(0);
    const last = await waitFor('the stopping record', () => records.find((r) => r.kind === 'agentStopping'), 5000);
    expect(last).toMatchObject({ probe: 'agent', event: 'stopping', handle: 0 });
    expect(last.seq).toBe(Math.max(...records.map((r) => r.seq)));
    // what systemd says here ("offline" on a machine it does not run); '' without systemctl
    const here = spawnSync('systemctl', ['is-system-running'], { encoding: 'utf8' });
    expect(last.raw.agentStopping).toMatchObject({ signal: 'SIGTERM', systemState: here.error ? '' : here.stdout.trim() });
  });
});
