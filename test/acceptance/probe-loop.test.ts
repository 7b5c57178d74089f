// Issue 8: a probe that loops or throws is contained without stalling the others. Each probe
// load runs in a worker thread of its own (guest-agent/modules/probe-worker.ts); a worker
// stuck in its code for 3 s is terminated, what its probe attached is released by the main
// thread, its module is quarantined, and the host is told once with a ProbeFault record. The
// agent, the heartbeat and the channel carry on throughout. Real agents on this machine.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { signModule } from '../../host/probes/package.js';
import { moduleDigest } from '../../proto/module-digest.js';
import { ErrorCode } from '../../proto/errors.js';
import { testProbeManifest } from '../helpers/agent-fixture.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();
if (why) console.warn(`SKIP probe-loop test: ${why}`);

const manifest = testProbeManifest('looper');
// It attaches a tracing instance (and a kprobe where the kernel has them), emits a record,
// and 300 ms after setup its timer never returns.
const code = Buffer.from(
  `export default { setup(ctx) {
    ctx.trace('signal', 'signal_generate', 'sig == 12', () => {});
    if (ctx.capabilities.kprobeEvents) ctx.kprobe('__send_signal_locked sig=%di:s32', 'sig == 12', () => {});
    ctx.emit('beat', { heartbeat: { count: 1, intervalMs: 0, delayMs: 0 } });
    ctx.after(300, () => { for (;;) {} });
  } };\n`,
);

function tracefsPath(): string {
  return existsSync('/sys/kernel/tracing/events') ? '/sys/kernel/tracing' : '/sys/kernel/debug/tracing';
}

/** What the agent with this pid has in tracefs for one probe handle: instances and kprobes. */
function kernelLeftovers(pid: number, handle: number): string[] {
  const t = tracefsPath();
  const inst = readdirSync(join(t, 'instances')).filter((n) => n.startsWith(`vesper.${pid}.${handle}.`));
  let kprobes: string[] = [];
  try {
    kprobes = readFileSync(join(t, 'kprobe_events'), 'utf8')
      .split('\n')
      .filter((l) => l.includes(`vesper_${pid}_${handle}_`));
  } catch {
    /* no kprobe_events */
  }
  return [...inst, ...kprobes];
}

describe.skipIf(Boolean(why))('a probe stuck in a loop, or throwing', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'vesper-loop-'));
  const stateFile = join(stateDir, 'run-state');
  const agents: LocalAgent[] = [];
  const clients: AgentClient[] = [];
  const children: ChildProcess[] = [];
  afterAll(async () => {
    for (const ch of children) ch.kill('SIGKILL');
    for (const c of clients) c.close();
    for (const a of agents) await a.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  /** A started agent (stopped by afterAll), its client, and every record it sent, in order. */
  async function startAgent(file: string, extraArgs: string[] = []) {
    const a = new LocalAgent({ stateFile: file, extraArgs });
    agents.push(a);
    await a.start();
    const c = await a.connect();
    clients.push(c);
    const recs: AgentRecord[] = [];
    c.on('record', (r) => recs.push(r));
    return { a, c, recs };
  }

  it('is terminated in its own worker: no restart, no loss, the heartbeat never stops', async () => {
    const { a, c, recs } = await startAgent(stateFile);
    const beats: number[] = []; // arrival times, ms
    const seqs: number[] = [];
    const protocolErrors: Error[] = [];
    c.on('protocolError', (e: Error) => protocolErrors.push(e));
    c.on('record', (r) => {
      seqs.push(r.seq);
      if (r.kind === 'heartbeat') beats.push(performance.now());
    });
    await c.load(a.module('heartbeat'), { params: { interval_ms: '50' } });
    await waitFor('heartbeats', () => beats.length >= 5, 10_000);
    const [looper] = await c.load(signModule({ manifestBytes: manifest, code }, a.key));
    const handle = looper!.handle;
    const loopAt = performance.now() + 300;
    expect(kernelLeftovers(a.pid, handle).length).toBeGreaterThan(0); // it did attach
    // Every thread of the agent, the probes' workers included, runs at the agent's priority.
    const nice = readdirSync(`/proc/${a.pid}/task`).map((t) => {
      const st = readFileSync(`/proc/${a.pid}/task/${t}/stat`, 'utf8');
      return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]);
    });
    expect(new Set(nice)).toEqual(new Set([-10]));

    const fault = await waitFor('the ProbeFault record of the loop', () => recs.find((r) => r.kind === 'probeFault'), 15_000, 20);
    const faultAfterMs = performance.now() - loopAt;
    expect(fault.raw.probeFault).toMatchObject({ probe: 'looper', handle, code: ErrorCode.PROBE_LOOPED, unloaded: true });
    expect(faultAfterMs).toBeGreaterThanOrEqual(2900);
    expect(faultAfterMs).toBeLessThan(8000);
    // Beats go on for a second after the fault too.
    const beatsAtFault = beats.length;
    await waitFor('heartbeats after the fault', () => beats.length >= beatsAtFault + 15, 5000);

    // The agent was never killed or restarted.
    expect(a.proc!.exitCode).toBeNull();
    expect(a.proc!.signalCode).toBeNull();
    // The heartbeat kept coming all through the loop: no gap over 500 ms.
    const during = beats.filter((t) => t >= loopAt - 200);
    let gap = 0;
    for (let i = 1; i < during.length; i++) gap = Math.max(gap, during[i]! - during[i - 1]!);
    console.warn(
      `probe-loop: ProbeFault ${Math.round(faultAfterMs)} ms after the loop began; longest heartbeat gap meanwhile ${Math.round(gap)} ms`,
    );
    expect(gap).toBeLessThan(500);

    // Unloaded, and nothing of it left in the kernel.
    expect((await c.list()).map((p) => p.name)).toEqual(['heartbeat']);
    await waitFor('its tracing instance and kprobes removed', () => kernelLeftovers(a.pid, handle).length === 0, 10_000, 50);

    // Every record exactly once: numbered without a gap, no loss reported.
    const sorted = [...seqs].sort((x, y) => x - y);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(sorted.at(-1)! - sorted[0]! + 1).toBe(seqs.length);
    expect(recs.filter((r) => r.kind === 'loss')).toEqual([]);
    expect(protocolErrors).toEqual([]);
    // The record it emitted before it looped came through.
    expect(recs.some((r) => r.kind === 'heartbeat' && r.handle === handle)).toBe(true);

    // Quarantined: written down (told: this agent told the host), and a re-push is refused.
    const q = readFileSync(`${stateFile}.quarantine`, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(q).toHaveLength(1);
    expect(q[0]).toMatchObject({ probe: 'looper', digest: moduleDigest(manifest, code).toString('hex'), told: true });
    expect(q[0]!['stalledMs']).toBeGreaterThanOrEqual(3000);
    await expect(c.load(signModule({ manifestBytes: manifest, code }, a.key))).rejects.toMatchObject({
      code: ErrorCode.PROBE_QUARANTINED,
    });
    // A fixed module (another digest) loads.
    const fixed = Buffer.from('export default { setup(ctx) { ctx.after(300, () => {}); } };\n');
    await expect(c.load(signModule({ manifestBytes: manifest, code: fixed }, a.key))).resolves.toHaveLength(1);
    await c.unload('looper');

    // A later agent with the same state file refuses the module too, and does not tell the
    // host a second time.
    c.close();
    await a.stop();
    const { a: b, c: c2, recs: recs2 } = await startAgent(stateFile);
    await expect(c2.load(signModule({ manifestBytes: manifest, code }, b.key))).rejects.toMatchObject({
      code: ErrorCode.PROBE_QUARANTINED,
    });
    await c2.load(b.module('heartbeat'), { params: { interval_ms: '50' } });
    await waitFor('heartbeats from the new agent', () => recs2.filter((r) => r.kind === 'heartbeat').length >= 3, 10_000);
    expect(recs2.filter((r) => r.kind === 'probeFault')).toEqual([]);
  }, 60_000);

  /** An agent with the signal probe on SIGUSR1 to a `sleep` that ignores it, and its records. */
  async function signalAgent(state: string, extraArgs: string[] = []) {
    const { a, c, recs } = await startAgent(join(stateDir, state), extraArgs);
    const target = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
    children.push(target);
    await sleep(200);
    await c.load(a.module('signal'), { params: { signals: 'USR1', include_ignored: 'true', comms: 'sleep' } });
    return { a, c, recs, target };
  }

  it('a probe that throws under a signal storm is unloaded; another keeps receiving', async () => {
    const { a, c, recs, target } = await signalAgent('run-state-2');
    // It throws on the 200th signal it sees.
    const throwerCode = Buffer.from(
      `export default { setup(ctx) {
        let n = 0;
        ctx.trace('signal', 'signal_generate', 'sig == 10', () => { if (++n === 200) throw new Error('thrower gives up at ' + n); });
      } };\n`,
    );
    const [thrower] = await c.load(signModule({ manifestBytes: testProbeManifest('thrower'), code: throwerCode }, a.key));
    const signals = () => recs.filter((r) => r.kind === 'signal').length;
    // The storm: 20 000 signals in bursts, from this process.
    let sent = 0;
    let faultAt = -1;
    let signalsAtFault = 0;
    for (let burst = 0; burst < 40 && sent < 20_000; burst++) {
      for (let i = 0; i < 500; i++) process.kill(target.pid!, 'SIGUSR1');
      sent += 500;
      if (faultAt < 0 && recs.some((r) => r.kind === 'probeFault')) {
        faultAt = sent;
        signalsAtFault = signals();
      }
      await sleep(20);
    }
    const fault = await waitFor('the ProbeFault of the thrower', () => recs.find((r) => r.kind === 'probeFault'), 10_000);
    expect(fault.raw.probeFault).toMatchObject({
      probe: 'thrower',
      handle: thrower!.handle,
      code: ErrorCode.PROBE_CRASHED,
      unloaded: true,
    });
    expect(fault.raw.probeFault?.message).toContain('thrower gives up at 200');
    // The signal probe got every signal, before and after the fault.
    await waitFor('every signal recorded', () => signals() >= sent, 20_000, 50);
    expect(signals()).toBe(sent);
    expect(recs.filter((r) => r.kind === 'loss')).toEqual([]);
    if (faultAt > 0) expect(signals()).toBeGreaterThan(signalsAtFault);
    expect((await c.list()).map((p) => p.name)).toEqual(['signal']);
    await waitFor('the thrower released in the kernel', () => kernelLeftovers(a.pid, thrower!.handle).length === 0, 10_000, 50);
    expect(a.proc!.exitCode).toBeNull();
  }, 60_000);
  it('a slow probe under a storm is not taken for a loop; what it cannot keep up with is told as loss', async () => {
    const { a, c, recs, target } = await signalAgent('run-state-3', ['--probe-backlog', '3000']);
    // 1 ms of work per signal, and a record for each: at most ~1000 a second.
    const slowCode = Buffer.from(
      `export default { setup(ctx) {
        ctx.trace('signal', 'signal_generate', 'sig == 10', (ev) => {
          const end = Date.now() + 1;
          while (Date.now() < end) {}
          ctx.emit('beat', { heartbeat: { count: 1, intervalMs: 0, delayMs: 0 } }, ev.ts);
        });
      } };\n`,
    );
    const [slow] = await c.load(signModule({ manifestBytes: testProbeManifest('slow'), code: slowCode }, a.key));
    const sent = 12_000;
    for (let burst = 0; burst < sent / 500; burst++) {
      for (let i = 0; i < 500; i++) process.kill(target.pid!, 'SIGUSR1');
      await sleep(10);
    }
    const signals = () => recs.filter((r) => r.kind === 'signal').length;
    const slowDone = () => recs.filter((r) => r.kind === 'heartbeat' && r.handle === slow!.handle).length;
    const slowLost = () =>
      recs.filter((r) => r.kind === 'loss' && r.raw.loss?.handle === slow!.handle).reduce((n, r) => n + Number(r.raw.loss?.count ?? 0), 0);
    await waitFor('every signal recorded by the signal probe', () => signals() >= sent, 20_000, 50);
    // The slow one works through its backlog (more than 3 s of work), then has handled or
    // reported every signal.
    await waitFor('the slow probe done or told', () => slowDone() + slowLost() >= sent, 30_000, 100);
    console.warn(`probe-loop: slow probe handled ${slowDone()}, told ${slowLost()} lost, of ${sent}`);
    expect(slowDone() + slowLost()).toBe(sent);
    expect(slowLost()).toBeGreaterThan(0);
    expect(slowDone()).toBeGreaterThan(3000);
    expect(signals()).toBe(sent);
    expect(recs.filter((r) => r.kind === 'probeFault')).toEqual([]);
    expect((await c.list()).map((p) => p.name).sort()).toEqual(['signal', 'slow']);
  }, 90_000);
  it('a paused agent (as in a paused guest) is not taken for a loop', async () => {
    const { a, c, recs } = await startAgent(join(stateDir, 'run-state-4'));
    await c.load(a.module('heartbeat'), { params: { interval_ms: '50' } });
    await waitFor('heartbeats', () => recs.filter((r) => r.kind === 'heartbeat').length >= 5, 10_000);
    // Every thread stops for longer than the 3 s stall, then runs again.
    process.kill(a.pid, 'SIGSTOP');
    await sleep(4500);
    process.kill(a.pid, 'SIGCONT');
    const n = recs.filter((r) => r.kind === 'heartbeat').length;
    await waitFor('heartbeats after the pause', () => recs.filter((r) => r.kind === 'heartbeat').length >= n + 20, 10_000);
    await sleep(1000);
    expect(recs.filter((r) => r.kind === 'probeFault')).toEqual([]);
    expect((await c.list()).map((p) => p.name)).toEqual(['heartbeat']);
    expect(a.proc!.exitCode).toBeNull();
    expect(existsSync(join(stateDir, 'run-state-4.quarantine'))).toBe(false);
  }, 60_000);
});
