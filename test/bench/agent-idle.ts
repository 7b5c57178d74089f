// Host-mode agent at rest and with a looping probe (issue 15): idle CPU, wake-ups and RSS with
// all six shipped probes loaded, and what a probe stuck in a loop costs the others.
import { readFileSync, readdirSync } from 'node:fs';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { signModule } from '../../host/probes/package.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { round, type Metrics } from './stats.js';

/** The kprobe the bench attaches: a symbol every kernel of the last years has. */
export const KPROBE_SPEC = '__send_signal_locked sig=%di:s32';

export function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]); // utime + stime
}

export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Context switches (voluntary + involuntary) of every thread of a process: its wake-ups. */
export function contextSwitches(pid: number): number {
  let n = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      for (const m of st.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) n += Number(m[1]);
    } catch {
      /* the thread ended meanwhile */
    }
  }
  return n;
}

/**
 * Loads the six shipped probes as an idle guest would have them; kprobe and psi only where
 * the kernel has them. Returns what could not be loaded, and why.
 */
export async function loadAllProbes(c: AgentClient, module: (name: string) => Parameters<AgentClient['load']>[0]): Promise<string[]> {
  const skipped: string[] = [];
  for (const p of ['signal', 'process', 'oom']) await c.load(module(p));
  await c.load(module('heartbeat'), { params: { interval_ms: '1000' } });
  const caps = c.hello.capabilities;
  if (caps?.psi) await c.load(module('psi'));
  else skipped.push('psi: the kernel has no PSI');
  if (caps?.kprobeEvents)
    await c.load(module('kprobe'), { params: { spec: KPROBE_SPEC, filter: 'sig == 11' } }).catch((e: Error) => {
      skipped.push(`kprobe: ${e.message}`);
    });
  else skipped.push('kprobe: the kernel has no kprobe_events');
  return skipped;
}

/** how long the agent is left after loading its probes before its rest is measured */
export const SETTLE_S = 15;

/** CPU (per cent of one core) and wake-ups per second of a process over the next `seconds`. */
export async function idleWindow(
  pid: number,
  tick: number,
  seconds: number,
): Promise<{ cpuPct: number; wakeups: number; seconds: number }> {
  const t0 = cpuTicks(pid);
  const s0 = contextSwitches(pid);
  const w0 = performance.now();
  await sleep(seconds * 1000);
  const s = (performance.now() - w0) / 1000;
  return {
    cpuPct: round((100 * (cpuTicks(pid) - t0)) / tick / s, 3),
    wakeups: round((contextSwitches(pid) - s0) / s, 2),
    seconds: round(s, 1),
  };
}

/**
 * The agent at rest: RSS with the four probes of issue 2 (agent.rss_mb), then with all six,
 * and over IDLE_S seconds its CPU and its wake-ups (context switches of all its threads), after
 * SETTLE_S seconds whose figures are told apart.
 */
export async function agentIdle(m: Metrics, tick: number, idleS = 60): Promise<void> {
  const a = new LocalAgent({});
  let c: AgentClient | undefined;
  try {
    await a.start();
    c = await a.connect();
    for (const p of ['signal', 'process', 'oom']) await c.load(a.module(p));
    await c.load(a.module('heartbeat'), { params: { interval_ms: '1000' } });
    await sleep(2000);
    m['agent.rss_mb'] = round(rssMb(a.pid), 1);
    await c.unload('signal');
    await c.unload('process');
    await c.unload('oom');
    await c.unload('heartbeat');
    const skipped = await loadAllProbes(c, (p) => a.module(p));
    m['agent.idle_probes'] = skipped.length ? `six but ${skipped.join('; ')}` : 'all six';
    // The first seconds after the probes load are not rest: each isolate's collector shrinks
    // the heap its start-up left (about 55 wake-ups/s for ~10 s here). They are told apart
    // (.settling); the figures with targets are those of the agent at rest after them.
    m['agent.rss_mb.all_probes.settling'] = round(rssMb(a.pid), 1);
    const settle = await idleWindow(a.pid, tick, SETTLE_S);
    m['agent.idle_cpu_pct.settling'] = settle.cpuPct;
    m['agent.idle_wakeups_per_s.settling'] = settle.wakeups;
    m['agent.rss_mb.all_probes'] = round(rssMb(a.pid), 1);
    const w = await idleWindow(a.pid, tick, idleS);
    m['agent.idle_cpu_pct'] = w.cpuPct;
    m['agent.idle_wakeups_per_s'] = w.wakeups;
    m['agent.idle_window_s'] = w.seconds;
  } finally {
    c?.close();
    await a.stop();
  }
}

// The manifest of test/helpers/agent-fixture.ts (which imports vitest, so not from here).
const LOOPER_MANIFEST = Buffer.from(
  JSON.stringify({
    name: 'looper',
    version: '1.0.0',
    agent: '>=0.1.0 <1.0.0',
    description: 'test probe',
    maxInstances: 1,
    events: [{ id: 1, name: 'beat', payload: 'heartbeat', description: '' }],
    params: [],
  }),
);

const LOOPER = Buffer.from(
  `export default { setup(ctx) {
    ctx.trace('signal', 'signal_generate', 'sig == 12', () => {});
    ctx.after(300, () => { for (;;) {} });
  } };\n`,
);

/** A probe stuck in a loop beside the heartbeat (50 ms): the longest gap between beats, and when the fault came. */
export async function loopCost(m: Metrics): Promise<void> {
  const a = new LocalAgent({});
  let c: AgentClient | undefined;
  try {
    await a.start();
    c = await a.connect();
    const beats: number[] = [];
    const recs: AgentRecord[] = [];
    c.on('record', (r) => {
      recs.push(r);
      if (r.kind === 'heartbeat') beats.push(performance.now());
    });
    await c.load(a.module('heartbeat'), { params: { interval_ms: '50' } });
    await waitFor('heartbeats', () => beats.length >= 5, 10_000);
    await c.load(signModule({ manifestBytes: LOOPER_MANIFEST, code: LOOPER }, a.key));
    const loopAt = performance.now() + 300;
    const fault = await waitFor('the ProbeFault record', () => recs.find((r) => r.kind === 'probeFault'), 15_000, 10);
    const faultMs = performance.now() - loopAt;
    const n = beats.length;
    await waitFor('beats after the fault', () => beats.length >= n + 10, 5000);
    const during = beats.filter((t) => t >= loopAt - 200);
    let gap = 0;
    for (let i = 1; i < during.length; i++) gap = Math.max(gap, during[i]! - during[i - 1]!);
    m['agent.loop_fault_ms'] = round(faultMs, 0);
    m['agent.loop_fault_code'] = fault.raw.probeFault?.code ?? '';
    m['agent.loop_heartbeat_gap_ms.max'] = round(gap, 1);
  } finally {
    c?.close();
    await a.stop();
  }
}
