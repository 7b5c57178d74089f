// What running each probe in a worker thread costs: the agent's RSS with the shipped probes
// loaded, and signal -> record latency (one signal at a time, and under a storm), for two
// builds side by side in one run: `tsx test/bench/probe-workers.ts [--before DIR]` where DIR
// is another checkout of vesper with its dist/ built (the code before the change). Host mode:
// real agents on this machine, root, tracefs.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { AgentRecord } from '../../proto/record.js';
import type { LocalAgent as LocalAgentType } from '../../host/channel/local-agent.js';
import { sleep, waitFor } from '../helpers/wait.js';

const here = resolve(import.meta.dirname, '../..');
const args = process.argv.slice(2);
const before = args.includes('--before') ? resolve(args[args.indexOf('--before') + 1]!) : null;
const rate = Number(args.includes('--rate') ? args[args.indexOf('--rate') + 1] : 20_000);
const trials = Number(args.includes('--trials') ? args[args.indexOf('--trials') + 1] : 200);

const mono = (): number => Number(process.hrtime.bigint());
const pct = (xs: number[], p: number): number => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;
const r3 = (x: number): number => Math.round(x * 1000) / 1000;

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 102.4) / 10 : NaN;
}

/** Threads of the process and the nice values among them. */
function threads(pid: number): { count: number; nice: string } {
  const nice = new Map<number, number>();
  const tids = readdirSync(`/proc/${pid}/task`);
  for (const t of tids) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const v = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]);
      nice.set(v, (nice.get(v) ?? 0) + 1);
    } catch {
      /* gone */
    }
  }
  return { count: tids.length, nice: [...nice].map(([v, n]) => `${n}x${v}`).join(',') };
}

const STORM = `
const { parentPort, workerData } = require('node:worker_threads');
const { pid, rate, seconds } = workerData;
const t0 = Date.now();
let sent = 0;
while (Date.now() - t0 < seconds * 1000) {
  const due = Math.floor(((Date.now() - t0) / 1000) * rate);
  for (; sent < due; sent++) process.kill(pid, 'SIGUSR1');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 0.5);
}
parentPort.postMessage(sent);
`;

async function measure(label: string, root: string): Promise<Record<string, string | number>> {
  const { LocalAgent } = (await import(join(root, 'host/channel/local-agent.ts'))) as {
    LocalAgent: typeof LocalAgentType;
  };
  const m: Record<string, string | number> = { build: label };
  const target = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
  const a = new LocalAgent({ traceBufferKb: 4096 });
  try {
    await a.start();
    const c = await a.connect();
    const recs: AgentRecord[] = [];
    let onRec: ((r: AgentRecord) => void) | null = null;
    c.on('record', (r) => {
      recs.push(r);
      onRec?.(r);
    });
    await sleep(1000);
    m['rss_mb.no_probes'] = rssMb(a.pid);
    const loaded: string[] = [];
    const loads: [string, Record<string, string>][] = [
      ['heartbeat', {}],
      ['oom', {}],
      ['process', {}],
      ['psi', { resource: 'cpu' }],
      ['signal', { signals: 'USR1', include_ignored: 'true', comms: 'sleep' }],
      ['kprobe', { spec: '__send_signal_locked sig=%di:s32', filter: 'sig == 12' }],
    ];
    for (const [name, params] of loads)
      try {
        await c.load(a.module(name), { params });
        loaded.push(name);
      } catch (err) {
        console.error(`${label}: ${name} not loaded: ${(err as Error).message.slice(0, 100)}`);
      }
    m['probes_loaded'] = loaded.join(',');
    await sleep(2000);
    m['rss_mb.probes_loaded'] = rssMb(a.pid);
    const th = threads(a.pid);
    m['threads'] = th.count;
    m['threads_by_nice'] = th.nice;

    // One signal at a time: kernel event time to the record decoded here (same clock).
    const one: number[] = [];
    for (let i = 0; i < trials; i++) {
      let seen = 0;
      onRec = (r) => {
        if (r.kind === 'signal' && !seen) seen = mono() - r.monoNs;
      };
      process.kill(target.pid!, 'SIGUSR1');
      await waitFor('signal record', () => seen > 0, 5000, 0.2);
      one.push(seen / 1e6);
      await sleep(5);
    }
    one.sort((x, y) => x - y);
    m['signal_to_record_ms.idle.p50'] = r3(pct(one, 50));
    m['signal_to_record_ms.idle.p99'] = r3(pct(one, 99));

    // A storm: every signal record's latency.
    const lat: number[] = [];
    onRec = (r) => {
      if (r.kind === 'signal') lat.push((mono() - r.monoNs) / 1e6);
    };
    recs.length = 0;
    const sent = await new Promise<number>((res, rej) => {
      const w = new Worker(STORM, { eval: true, workerData: { pid: target.pid, rate, seconds: 3 } });
      w.once('message', res);
      w.once('error', rej);
    });
    const lost = (): number => recs.filter((r) => r.kind === 'loss').reduce((n, r) => n + Number(r.raw.loss?.count ?? 0), 0);
    await waitFor('storm drained', () => lat.length + lost() >= sent, 30_000, 20).catch(() => undefined);
    onRec = null;
    lat.sort((x, y) => x - y);
    m[`storm.signals_sent`] = sent;
    m[`storm.recorded`] = lat.length;
    m[`storm.lost`] = lost();
    m[`signal_to_record_ms.storm_${rate}_per_s.p50`] = r3(pct(lat, 50));
    m[`signal_to_record_ms.storm_${rate}_per_s.p99`] = r3(pct(lat, 99));
    m[`signal_to_record_ms.storm_${rate}_per_s.max`] = r3(lat.at(-1) ?? NaN);
    m['rss_mb.after_storm'] = rssMb(a.pid);
    c.close();
  } finally {
    target.kill('SIGKILL');
    await a.stop();
  }
  return m;
}

const runs: Record<string, string | number>[] = [];
if (before) runs.push(await measure('before', before));
runs.push(await measure('after', here));
const keys = [...new Set(runs.flatMap((r) => Object.keys(r)))];
const w = Math.max(...keys.map((k) => k.length));
for (const k of keys) console.log(`${k.padEnd(w)}  ${runs.map((r) => String(r[k] ?? '-').padStart(14)).join('  ')}`);
