// Issue 8: a probe that never returns. Probes run on the agent's one thread, so a loop stops
// everything; the loop watchdog (guest-agent/modules/loop-watchdog.ts) notices, quarantines
// the module and kills the agent, and the next agent refuses that module, tells the host with
// a ProbeFault record, and serves the other probes again. Real agents on this machine.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AgentClient, AgentRecord } from '../../host/channel/agent-client.js';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { signModule } from '../../host/probes/package.js';
import { moduleDigest } from '../../proto/module-digest.js';
import { ErrorCode } from '../../proto/errors.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();
if (why) console.warn(`SKIP probe-loop test: ${why}`);

const manifest = Buffer.from(
  JSON.stringify({
    name: 'looper',
    version: '1.0.0',
    agent: '>=0.1.0 <1.0.0',
    description: 'test probe that never returns from its timer',
    maxInstances: 1,
    events: [{ id: 1, name: 'beat', payload: 'heartbeat', description: '' }],
    params: [],
  }),
);
// 300 ms after setup, its timer never returns.
const code = Buffer.from('export default { setup(ctx) { ctx.after(300, () => { for (;;) {} }); } };\n');

describe.skipIf(Boolean(why))('a probe stuck in a loop', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'vesper-loop-'));
  const stateFile = join(stateDir, 'run-state');
  const agents: LocalAgent[] = [];
  const clients: AgentClient[] = [];
  afterAll(async () => {
    for (const c of clients) c.close();
    for (const a of agents) await a.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('is quarantined by the watchdog; the next agent refuses it, says so, and serves the others', async () => {
    const a = new LocalAgent({ stateFile });
    agents.push(a);
    await a.start();
    const c = await a.connect();
    clients.push(c);
    await c.load(a.module('heartbeat'), { params: { interval_ms: '50' } });
    await c.load(signModule({ manifestBytes: manifest, code }, a.key));
    const loopAt = Date.now() + 300;
    // The watchdog acts after 3 s of the looping timer; the agent is then gone.
    await waitFor(
      'the looping agent killed by its watchdog',
      () => a.proc!.signalCode === 'SIGKILL' || a.proc!.exitCode !== null,
      20_000,
      50,
    );
    expect(a.proc!.signalCode).toBe('SIGKILL');
    const q = readFileSync(`${stateFile}.quarantine`, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(q).toHaveLength(1);
    expect(q[0]).toMatchObject({ probe: 'looper', digest: moduleDigest(manifest, code).toString('hex') });
    expect(q[0]!['stalledMs']).toBeGreaterThanOrEqual(3000);

    // What restarts the agent (systemd, the guest's init, the SSH relay) starts this one.
    const b = new LocalAgent({ stateFile });
    agents.push(b);
    await b.start();
    const recs: AgentRecord[] = [];
    const c2 = await b.connect();
    clients.push(c2);
    c2.on('record', (r) => recs.push(r));
    expect(c2.hello.endedRuns?.map((r) => r.agentPid)).toContain(a.pid);
    const fault = await waitFor('the ProbeFault record of the quarantine', () => recs.find((r) => r.kind === 'probeFault'), 10_000);
    expect(fault.raw.probeFault).toMatchObject({ probe: 'looper', code: ErrorCode.PROBE_LOOPED, unloaded: true });
    // Pushed again (as the host does after an agent restart): refused, whoever signed it.
    await expect(c2.load(signModule({ manifestBytes: manifest, code }, b.key))).rejects.toMatchObject({
      code: ErrorCode.PROBE_QUARANTINED,
    });
    // The others run again.
    await c2.load(b.module('heartbeat'), { params: { interval_ms: '50' } });
    await waitFor('heartbeats from the new agent', () => recs.filter((r) => r.kind === 'heartbeat').length >= 3, 10_000);
    console.warn(`probe-loop: the other probes were stalled for ${Date.now() - loopAt} ms (watchdog 3 s, restart, re-push)`);
    // A fixed module (another digest) loads.
    const fixed = Buffer.from('export default { setup(ctx) { ctx.after(300, () => {}); } };\n');
    await expect(c2.load(signModule({ manifestBytes: manifest, code: fixed }, b.key))).resolves.toHaveLength(1);
    expect(b.proc!.exitCode).toBeNull();
  }, 60_000);
});
