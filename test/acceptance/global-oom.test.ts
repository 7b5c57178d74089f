// Issue 8: the agent is never the victim of a guest-wide OOM. A real guest (512 MiB, no swap)
// under libvirtd, the oom and heartbeat probes attached over the real channel, and a hog in the
// root cgroup (no memory.max anywhere above it) that reads /dev/zero into memory until the
// kernel's *global* OOM killer fires. Every OOM kill of the other tests is a hog inside a
// limited cgroup; this one has nothing but the guest's RAM to run out of, so the killer ranks
// every process of the guest, the agent's node (tens of MiB) among them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../proto/record.js';
import { GuestSession, type ConnectedInfo } from '../../host/channel/guest-session.js';
import { VmRig } from '../rigs/vm/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU, apt)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP global OOM test: ${why}`);

const HEARTBEAT_MS = 500;
const GUEST_MIB = 512;

interface AgentStanding {
  pid: number;
  adj: number;
  score: number;
  rssKb: number;
  threads: number;
}

/** "ok agent-oom PID ADJ SCORE RSS_KB THREADS" (ADJ is negative: numbersIn would drop it). */
function standing(line: string): AgentStanding {
  const m = /^ok agent-oom (\d+) (-?\d+) (\d+) (\d+) (\d+)$/.exec(line);
  if (!m) throw new Error(`unexpected agent-oom answer: ${line}`);
  const [pid, adj, score, rssKb, threads] = m.slice(1).map(Number) as [number, number, number, number, number];
  return { pid, adj, score, rssKb, threads };
}

describe.skipIf(Boolean(why))('a guest-wide OOM', () => {
  let rig: VmRig;
  let session: GuestSession;
  const records: AgentRecord[] = [];
  const connected: ConnectedInfo[] = [];
  const hbLost: number[] = [];
  const problems: string[] = [];

  beforeAll(async () => {
    rig = new VmRig({
      testHelpers: true,
      memoryMiB: GUEST_MIB,
      onProgress: (s, d) => console.warn(`vm rig (global oom): ${s}${d ? `: ${d}` : ''}`),
    });
    await rig.prepare();
    (await rig.boot()).close(); // the session below keeps the link from now on
    session = new GuestSession({ socket: rig.agentSocket, module: (n) => rig.module(n), maxBackoffMs: 1000 });
    session.on('record', (r) => records.push(r));
    session.on('connected', (i) => connected.push(i));
    session.on('heartbeat-lost', (i) => hbLost.push(i.silentMs));
    session.on('protocolError', (e) => problems.push(e.message));
    session.start();
    await session.waitConnected(60_000);
    await session.attach({ name: 'oom' });
    await session.attach({ name: 'heartbeat', params: { interval_ms: String(HEARTBEAT_MS) } });
    console.warn(`vm rig (global oom): guest ${rig.name} runs under ${rig.accel.toUpperCase()}`);
  }, 600_000);

  afterAll(async () => {
    session?.stop();
    await rig?.stop();
  }, 120_000);

  it('the kernel kills the hog, never the agent: same agent run, heartbeats on, no sequence gap', { timeout: 110_000 }, async () => {
    await waitFor('heartbeats', () => records.filter((r) => r.kind === 'heartbeat').length >= 2, 20_000, 50);
    const hello = session.client!.hello;
    const run = session.agentRun;
    const linksBefore = connected.length;
    const before = standing(await rig.fault('agent-oom'));
    expect(before.pid).toBe(hello.agentPid);
    expect(before.adj).toBe(-1000);
    expect(before.score).toBe(0); // -1000 takes the agent out of the killer's ranking altogether

    const t0 = Date.now();
    const [hog, startUptimeMs] = numbersIn(await rig.fault('oom-global'));
    const rec = await waitFor(
      'the OOM kill of the hog',
      () => records.find((r) => r.kind === 'oom' && r.raw.oom?.victim?.pid === hog),
      60_000,
      20,
    );
    const hostMs = Date.now() - t0;
    const oom = rec.raw.oom!;
    // A whole-guest OOM: no memory cgroup's limit was hit (the kernel says global_oom, so no
    // oom_memcg), and the constraint is none, not CONSTRAINT_MEMCG.
    expect(oom).toMatchObject({
      victim: { pid: hog, comm: 'tail' },
      constraint: 'CONSTRAINT_NONE',
      memcg: '',
      taskMemcg: '/',
      figuresComplete: true,
    });
    // It really filled the guest: well over half of its RAM was the hog's.
    expect(Number(oom.anonRssKb)).toBeGreaterThan((GUEST_MIB / 2) * 1024);
    // No other OOM kill: the agent (or anything else) was not taken before or after the hog.
    const kills = records.filter((r) => r.kind === 'oom');
    expect(kills.map((r) => r.raw.oom?.victim?.pid)).toEqual([hog]);

    // The agent lives on: beats after the OOM record, from the same probe instance (its count
    // goes on by one), over the same link to the same agent run.
    await waitFor(
      'heartbeats after the OOM',
      () => records.filter((r) => r.kind === 'heartbeat' && r.seq > rec.seq).length >= 3,
      20_000,
      50,
    );
    const after = standing(await rig.fault('agent-oom'));
    expect(after.pid).toBe(before.pid);
    expect(after.adj).toBe(-1000);
    expect(session.agentRun).toBe(run);
    expect(session.client?.hello.agentPid).toBe(hello.agentPid);
    expect(session.client?.hello.agentStartMonoNs).toBe(hello.agentStartMonoNs);
    expect(connected.slice(linksBefore).filter((c) => c.agentRestarted)).toEqual([]);
    expect(hbLost).toEqual([]);

    const beats = records.filter((r) => r.kind === 'heartbeat').map((r) => r.raw.heartbeat!);
    const counts = beats.map((b) => Number(b.count));
    expect(counts).toEqual(counts.map((_, i) => counts[0]! + i));
    const maxDelay = Math.max(...beats.map((b) => Number(b.delayMs)));

    // Every record numbered by this agent arrived, in order, none lost in the ring.
    const seqs = records.map((r) => r.seq);
    expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i));
    expect(records.filter((r) => r.kind === 'loss')).toEqual([]);
    expect(problems).toEqual([]);

    const guestMs = rec.monoNs / 1e6 - startUptimeMs!;
    console.warn(
      `global OOM: hog ${hog} (${oom.victim?.comm}) killed ${guestMs.toFixed(0)} ms after it started (guest clock, ±10 ms), ` +
        `record on the host ${hostMs} ms after the command; constraint ${oom.constraint}, task_memcg ${oom.taskMemcg}, ` +
        `memcg '${oom.memcg}', anon-rss ${oom.anonRssKb} kB, total-vm ${oom.totalVmKb} kB, trigger ${oom.trigger?.comm}(${oom.trigger?.pid}); ` +
        `agent ${after.pid} adj ${after.adj} score ${before.score}->${after.score} rss ${before.rssKb}->${after.rssKb} kB, ` +
        `${after.threads} threads; heartbeats ${counts[0]}..${counts.at(-1)}, max delay ${maxDelay.toFixed(1)} ms; ` +
        `records seq ${seqs[0]}..${seqs.at(-1)}`,
    );
  });
});
