// The busy-guest soak (issue 8), for test/acceptance/soak.test.ts (60 s) and the benchmark
// test/bench/soak.ts (10 min): one real guest under libvirtd with the agent, vesperd as its own
// process with the heartbeat (every 500 ms), signal and oom probes attached, and stress-ng in the
// guest keeping memory and a real block device busy for the whole run. Meanwhile real faults are
// injected through the guest's test helper at intervals: the demo service's SIGSEGV, a fresh
// process's SIGSEGV, an OOM kill in a 32M memory cgroup. Afterwards the store says what vesperd
// saw, and nothing else is consulted:
//
// - heartbeat delay: for each heartbeat n of the stress window whose predecessor n-1 (same agent
//   run) is in the window too, (t_n - t_{n-1}) - interval, clamped at 0, where t is vesperd's own
//   arrival time of the record (the store's host_time_us, the host clock, taken when the batch
//   holding it came off the channel). The agent's timer schedules each beat one interval after
//   the previous one ran, so this is how much later than due each beat reached the manager: the
//   guest's scheduling and the channel together. A beat that was held up in transit shows once
//   (the next gap is short, clamped to 0). It is the quantity vesperd's heartbeat-lost watches:
//   heartbeat-lost fires when a gap exceeds 3 intervals, i.e. a delay above 1000 ms at 500 ms.
// - guest timer delay: the probe's own delayMs (the same gap minus the interval, on the guest's
//   monotonic clock, in the agent): the guest's share of the delay.
// - transit jitter: (t_n - t_{n-1}) - (g_n - g_{n-1}), g the guest's monotonic time of the beat:
//   how much the channel and the host added to a gap (negative when they took some off).
// - false alarms: every channel agent-lost and heartbeat-lost from the start of the stress to the
//   end of the run: the guest was only busy.
// - missed faults: injected faults (the helper answered with the victim's pid) of which the store
//   holds no record within 30 s after the stress: a SIGSEGV to that pid, an OOM kill of that pid.
// - the agent as OOM victim: any oom_kill whose victim is one of the agent's pids (from the
//   channel's agent-connected events, every run of the agent seen).
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { VmRig } from '../rigs/vm/rig.js';
import { numbersIn } from './fault-answer.js';
import { openStoreForSql } from './store-sql.js';
import { VesperdProcess, writeVesperdConfig } from './vesperd-process.js';
import { sleep, waitFor } from './wait.js';

export const HEARTBEAT_INTERVAL_MS = 500;

export interface SoakOptions {
  /** how long stress-ng runs, and faults are injected */
  durationS: number;
  /** seconds between injected faults (default 4) */
  faultEveryS?: number;
  /** guest memory (default 1024 MiB) */
  memoryMiB?: number;
  /** guest vCPUs (default 1: the agent competes with every stress worker for one CPU) */
  vcpus?: number;
  /**
   * Runs beside the fault injection while the stress lasts (t0: when it started, host ms),
   * with the test helper (one command at a time: its port opens once).
   */
  during?: (helper: (cmd: string) => Promise<string>, t0: number) => Promise<void>;
  log?: (line: string) => void;
}

/** One heartbeat of the window and its predecessor's gap (see the definitions above). */
export interface Beat {
  count: number;
  /** host arrival, ms after the stress started */
  atMs: number;
  delayMs: number;
  guestTimerMs: number;
  jitterMs: number;
  /** ms the guest's vCPU threads waited on the host's run queue during this beat's gap */
  vcpuWaitMs: number;
  /** the same for vesperd's main thread */
  vesperdWaitMs: number;
}

export type FaultKind = 'segv' | 'crash' | 'oom';

export interface InjectedFault {
  kind: FaultKind;
  /** the victim's pid, from the helper's answer */
  pid: number;
  /** host time the helper answered */
  atMs: number;
  /** id of the stored event that shows it, if any */
  eventId: number | null;
}

export interface Distribution {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export interface SoakResult {
  accel: string;
  vm: string;
  /** the stress window as the host saw it (stress started .. stress stopped) */
  windowS: number;
  /** heartbeats vesperd stored within the window */
  heartbeats: number;
  /** beats that should have arrived in the window at one per interval */
  heartbeatsExpected: number;
  delayMs: Distribution;
  guestTimerDelayMs: Distribution;
  transitJitterMs: Distribution;
  /** every beat measured, in order */
  beats: Beat[];
  /** the worst beats: host delay, with the guest's share */
  worst: Beat[];
  /**
   * Share of the window the guest's vCPU threads (QEMU's "CPU n/TCG") and vesperd waited on
   * the host's run queue, runnable but not running (/proc/PID/task/TID/schedstat): how much of
   * the delay the host's own load explains. NaN when not readable.
   */
  hostWait: { vcpuPct: number; vesperdPct: number };
  falseAlarms: Array<{ event: string; hostTimeUs: number; payload: unknown }>;
  /** agent runs seen (agent-connected events with a pid not seen before), after the first */
  agentRestarts: number;
  agentPids: number[];
  faults: InjectedFault[];
  /** fault commands the helper refused or did not answer (not injected, so not "missed") */
  faultErrors: string[];
  missed: InjectedFault[];
  oomKills: Array<{ pid: number; comm: string; agent: boolean }>;
  agentOomVictim: number;
  /** records the agent reported lost during the run */
  recordsLost: number;
  /** stress-ng's report: bogo ops per stressor, and the scratch disk's kB read and written */
  stress: Record<string, number>;
  stressDir: string;
}

/**
 * What stress-ng runs in the guest: one memory worker (a bounded share of the guest's memory,
 * so that the guest keeps running: its page cache is what gets squeezed), one disk worker
 * (sequential writes and reads of a 128M file), and iomix (mixed reads, writes, syncs,
 * fadvise and readahead on 64M) on the scratch disk, which the host writes through O_DIRECT.
 */
export function stressArgs(memoryMiB: number): string[] {
  const vmMiB = Math.max(64, Math.floor(memoryMiB * 0.375));
  return ['--vm', '1', '--vm-bytes', `${vmMiB}M`, '--hdd', '1', '--hdd-bytes', '128M', '--iomix', '1', '--iomix-bytes', '64M'];
}

const ROTATION: FaultKind[] = ['segv', 'crash', 'segv', 'oom'];

export function distribution(xs: number[]): Distribution {
  if (!xs.length) return { n: 0, p50: NaN, p99: NaN, max: NaN };
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number): number => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
  return { n: s.length, p50: at(50), p99: at(99), max: s.at(-1)! };
}

interface Row {
  id: number;
  plugin: string;
  event: string;
  host_time_us: number;
  agent_run: string | null;
  payload: string;
}

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const say = o.log ?? (() => undefined);
  const memoryMiB = o.memoryMiB ?? 1024;
  const rig = new VmRig({
    stressTools: true,
    testHelpers: true,
    memoryMiB,
    vcpus: o.vcpus ?? 1,
    scratchDiskMiB: 512,
    onProgress: (s, d) => say(`vm rig: ${s}${d ? `: ${d}` : ''}`),
  });
  const dir = mkdtempSync('/tmp/vesper-soak-');
  chmodSync(dir, 0o755);
  const socket = join(dir, 'run', 'vesperd.sock');
  const storePath = join(dir, 'events.db');
  const config = join(dir, 'vesper.yaml');
  const d = new VesperdProcess(config, socket);
  let stressing = false;
  try {
    await rig.prepare();
    (await rig.boot()).close(); // vesperd keeps the link from now on
    writeVesperdConfig(config, { socket, store: storePath, domains: [rig.name] });
    await d.start();
    await d.ok(['attach', rig.name, 'signal']);
    await d.ok(['attach', rig.name, 'oom']);
    await d.ok(['attach', rig.name, 'heartbeat', '--param', `interval_ms=${HEARTBEAT_INTERVAL_MS}`]);
    await waitFor(
      'vesperd linked, probes loaded',
      () =>
        d.json<{ link: string; attached: Array<{ loaded: boolean }> }>(['status', rig.name]).then(
          (s) => s.link === 'connected' && s.attached.length === 3 && s.attached.every((p) => p.loaded),
          () => false,
        ),
      120_000,
      500,
    );
    const db = openStoreForSql(storePath);
    try {
      const beats = db.prepare("SELECT count(*) AS n FROM events WHERE vm = ? AND plugin = 'heartbeat'");
      await waitFor('heartbeats stored', () => (beats.get(rig.name) as { n: number }).n >= 3, 30_000, 250);
      const lastId = (): number => (db.prepare('SELECT coalesce(max(id), 0) AS id FROM events').get() as { id: number }).id;

      // The stress window. stress-ng's own timeout is a backstop a little past it.
      const args = stressArgs(memoryMiB);
      say(`soak: stress-ng ${args.join(' ')} for ${o.durationS} s, a fault every ${o.faultEveryS ?? 4} s`);
      const cursor = lastId();
      const waits = hostWaitMeter(rig.name, d.configPath);
      let queue: Promise<unknown> = Promise.resolve();
      const helper = (cmd: string): Promise<string> => {
        const next = queue.then(() => rig.fault(cmd, 60_000));
        queue = next.catch(() => undefined);
        return next;
      };
      const started = await rig.fault(['stress', String(o.durationS + 30), ...args].join(' '), 60_000);
      stressing = true;
      const t0 = Date.now();
      const stressDir = started.split(/\s+/)[3] ?? '';
      say(`soak: ${started}`);

      const faults: InjectedFault[] = [];
      const faultErrors: string[] = [];
      const every = (o.faultEveryS ?? 4) * 1000;
      let nextReport = t0 + 30_000;
      const beside = o.during?.(helper, t0).catch((err: Error) => faultErrors.push(`during: ${err.message}`));
      for (let i = 0; i < 100_000; i++) {
        const due = t0 + (i + 1) * every;
        // The last fault still lands inside the stress, with time to be seen.
        if (due > t0 + o.durationS * 1000 - 2000) break;
        await sleep(Math.max(0, due - Date.now()));
        const kind = ROTATION[i % ROTATION.length]!;
        try {
          const answer = await helper(kind);
          const [pid] = numbersIn(answer);
          if (!pid) throw new Error(`no pid in "${answer}"`);
          faults.push({ kind, pid, atMs: Date.now(), eventId: null });
        } catch (err) {
          faultErrors.push(`${kind}: ${(err as Error).message}`);
        }
        if (Date.now() >= nextReport) {
          nextReport += 30_000;
          const n = (
            db.prepare("SELECT count(*) AS n FROM events WHERE vm = ? AND plugin = 'heartbeat' AND id > ?").get(rig.name, cursor) as {
              n: number;
            }
          ).n;
          say(
            `soak: ${Math.round((Date.now() - t0) / 1000)} s, ${n} heartbeats, ${faults.length} faults injected, ${faultErrors.length} refused`,
          );
        }
      }
      await sleep(Math.max(0, t0 + o.durationS * 1000 - Date.now()));
      await beside;
      const stopped = await rig.fault('stress-stop', 60_000);
      stressing = false;
      const t1 = Date.now();
      const { samples, ...hostWait } = waits.stop();
      say(`soak: ${stopped}`);
      const report = await rig.fault('stress-report', 30_000);
      say(`soak: ${report}`);
      const stress: Record<string, number> = {};
      const words = report.split(/\s+/).slice(2);
      for (let i = 0; i + 1 < words.length; i += 2) stress[words[i]!] = Number(words[i + 1]);

      // Every injected fault's record, given up to 30 s to arrive.
      const rows = (): Row[] =>
        db
          .prepare(
            'SELECT id, plugin, event, host_time_us, agent_run, payload_json(payload) AS payload FROM events WHERE vm = ? AND id > ? ORDER BY id',
          )
          .all(rig.name, cursor) as Row[];
      const match = (all: Row[]): void => {
        for (const f of faults) {
          if (f.eventId !== null) continue;
          const hit = all.find((r) => {
            const p = JSON.parse(r.payload) as {
              signal?: { sig?: number; target?: { pid?: number } };
              oom?: { victim?: { pid?: number } };
            };
            return f.kind === 'oom'
              ? r.plugin === 'oom' && r.event === 'oom_kill' && p.oom?.victim?.pid === f.pid
              : r.plugin === 'signal' && p.signal?.sig === 11 && p.signal.target?.pid === f.pid;
          });
          if (hit) f.eventId = hit.id;
        }
      };
      await waitFor(
        'every injected fault in the store',
        () => {
          match(rows());
          return faults.every((f) => f.eventId !== null);
        },
        30_000,
        500,
      ).catch(() => undefined);
      const all = rows();
      match(all);
      return {
        ...measure(all, t0, t1, db, rig.name, samples),
        hostWait,
        accel: rig.accel,
        vm: rig.name,
        windowS: (t1 - t0) / 1000,
        faults,
        faultErrors,
        missed: faults.filter((f) => f.eventId === null),
        stress,
        stressDir,
      };
    } finally {
      db.close();
    }
  } catch (err) {
    say(
      `soak: failed: ${(err as Error).message}\nvesperd log (tail): ${d.log.slice(-4000)}\nguest console (tail): ${rig.consoleTail(3000)}`,
    );
    throw err;
  } finally {
    if (stressing) await rig.fault('stress-stop', 30_000).catch(() => undefined);
    await d.killAll();
    await rig.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

type Measured = Omit<SoakResult, 'accel' | 'vm' | 'windowS' | 'faults' | 'faultErrors' | 'missed' | 'stress' | 'stressDir' | 'hostWait'>;

/** Nanoseconds the threads waited on the run queue, summed (the second schedstat field). */
function waitedNs(pid: number, threads: (comm: string) => boolean): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      if (!threads(readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim())) continue;
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
    } catch {
      /* the thread ended */
    }
  }
  return ns;
}

/** The same for a process's main thread (vesperd's event loop). */
function mainThreadWaitedNs(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ')[1]);
  } catch {
    return NaN;
  }
}

function pidOf(pattern: string): number {
  try {
    return Number(execFileSync('pgrep', ['-o', '-f', pattern], { encoding: 'utf8' }).trim().split('\n')[0]);
  } catch {
    return 0;
  }
}

/** Run-queue waits sampled over time, ns, for the share over the window and beat by beat. */
interface WaitSample {
  t: number;
  vcpuNs: number;
  vesperdNs: number;
}

/**
 * Samples the vCPU threads' and vesperd's run-queue waits every 100 ms until stopped; stop()
 * gives the samples and the shares of the time as percentages.
 */
function hostWaitMeter(vm: string, vesperdConfig: string): { stop: () => { samples: WaitSample[]; vcpuPct: number; vesperdPct: number } } {
  const qemu = pidOf(`qemu-system.*guest=${vm},`);
  const vesperd = pidOf(`vesper.mjs daemon --config ${vesperdConfig}`);
  const vcpu = (c: string): boolean => /^CPU \d+\/(TCG|KVM)$/.test(c);
  const samples: WaitSample[] = [];
  const sample = (): void => {
    samples.push({ t: Date.now(), vcpuNs: qemu ? waitedNs(qemu, vcpu) : NaN, vesperdNs: vesperd ? mainThreadWaitedNs(vesperd) : NaN });
  };
  sample();
  const timer = setInterval(sample, 100);
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      const [a, b] = [samples[0]!, samples.at(-1)!];
      const ms = b.t - a.t;
      return { samples, vcpuPct: (100 * (b.vcpuNs - a.vcpuNs)) / 1e6 / ms, vesperdPct: (100 * (b.vesperdNs - a.vesperdNs)) / 1e6 / ms };
    },
  };
}

/** ms a counter of the samples grew between two host times (linear between samples). */
function grewMs(samples: WaitSample[], key: 'vcpuNs' | 'vesperdNs', from: number, to: number): number {
  const at = (t: number): number => {
    let i = samples.findIndex((x) => x.t >= t);
    if (i < 0) i = samples.length - 1;
    if (i === 0) return samples[0]![key];
    const [a, b] = [samples[i - 1]!, samples[i]!];
    return b.t === a.t ? b[key] : a[key] + ((b[key] - a[key]) * (Math.min(t, b.t) - a.t)) / (b.t - a.t);
  };
  return (at(to) - at(from)) / 1e6;
}

function measure(all: Row[], t0: number, t1: number, db: ReturnType<typeof openStoreForSql>, vm: string, samples: WaitSample[]): Measured {
  const payload = (r: Row): Record<string, unknown> => JSON.parse(r.payload) as Record<string, unknown>;
  // The agent's pids: every agent-connected event since vesperd started, not only the window's.
  const connected = db
    .prepare(
      "SELECT payload_json(payload) AS payload FROM events WHERE vm = ? AND plugin = 'channel' AND event = 'agent-connected' ORDER BY id",
    )
    .all(vm) as Array<{ payload: string }>;
  const agentPids = [
    ...new Set(connected.map((r) => Number((JSON.parse(r.payload) as { agentPid?: number }).agentPid)).filter((p) => p > 0)),
  ];

  const beats = all.filter((r) => r.plugin === 'heartbeat' && r.host_time_us >= t0 * 1000 && r.host_time_us <= t1 * 1000);
  const delays: number[] = [];
  const guest: number[] = [];
  const jitter: number[] = [];
  const list: Beat[] = [];
  for (let i = 1; i < beats.length; i++) {
    const a = beats[i - 1]!;
    const b = beats[i]!;
    if (a.agent_run !== b.agent_run) continue;
    const pa = payload(a);
    const pb = payload(b);
    const hb = pb['heartbeat'] as { count?: number; delayMs?: number };
    const hostGap = (b.host_time_us - a.host_time_us) / 1000;
    const guestGap = (Number(pb['monoNs']) - Number(pa['monoNs'])) / 1e6;
    const delay = Math.max(0, hostGap - HEARTBEAT_INTERVAL_MS);
    delays.push(delay);
    guest.push(Number(hb.delayMs ?? 0));
    jitter.push(hostGap - guestGap);
    list.push({
      count: Number(hb.count),
      atMs: b.host_time_us / 1000 - t0,
      delayMs: delay,
      guestTimerMs: Number(hb.delayMs ?? 0),
      jitterMs: hostGap - guestGap,
      vcpuWaitMs: grewMs(samples, 'vcpuNs', a.host_time_us / 1000, b.host_time_us / 1000),
      vesperdWaitMs: grewMs(samples, 'vesperdNs', a.host_time_us / 1000, b.host_time_us / 1000),
    });
  }
  const worst = [...list].sort((x, y) => y.delayMs - x.delayMs).slice(0, 5);
  const falseAlarms = all
    .filter((r) => r.plugin === 'channel' && (r.event === 'agent-lost' || r.event === 'heartbeat-lost'))
    .map((r) => ({ event: r.event, hostTimeUs: r.host_time_us, payload: payload(r) }));
  const oomKills = all
    .filter((r) => r.plugin === 'oom' && r.event === 'oom_kill')
    .map((r) => {
      const v = (payload(r)['oom'] as { victim?: { pid?: number; comm?: string } }).victim ?? {};
      return { pid: Number(v.pid), comm: String(v.comm ?? ''), agent: agentPids.includes(Number(v.pid)) };
    });
  const recordsLost = all
    .filter((r) => r.plugin === 'channel' && r.event === 'records-lost')
    .reduce((n, r) => {
      // The agent's own report carries a loss record; one vesperd makes for a dead run, a count.
      const p = payload(r) as { loss?: { count?: number }; count?: number };
      return n + Number(p.loss?.count ?? p.count ?? 0);
    }, 0);
  return {
    heartbeats: beats.length,
    heartbeatsExpected: Math.floor((t1 - t0) / HEARTBEAT_INTERVAL_MS),
    delayMs: distribution(delays),
    guestTimerDelayMs: distribution(guest),
    transitJitterMs: distribution(jitter),
    beats: list,
    worst,
    falseAlarms,
    agentRestarts: Math.max(0, agentPids.length - 1),
    agentPids,
    oomKills,
    agentOomVictim: oomKills.filter((k) => k.agent).length,
    recordsLost,
  };
}

/** A beat this late or later counts as late in lateBeats. */
export const LATE_MS = 50;

/**
 * The beats at least LATE_MS late and the host's part in them: how long the guest's vCPU
 * waited on the host's run queue during their gaps, beside the same for the other beats.
 */
export function lateBeats(r: SoakResult): { n: number; vcpuWaitMs: Distribution; otherVcpuWaitMs: Distribution } {
  const late = r.beats.filter((b) => b.delayMs >= LATE_MS);
  return {
    n: late.length,
    vcpuWaitMs: distribution(late.map((b) => b.vcpuWaitMs)),
    otherVcpuWaitMs: distribution(r.beats.filter((b) => b.delayMs < LATE_MS).map((b) => b.vcpuWaitMs)),
  };
}

/** The result in a few lines, for the test's console and the benchmark's log. */
export function describeSoak(r: SoakResult): string {
  const f = (x: Distribution): string => `p50 ${x.p50.toFixed(1)} / p99 ${x.p99.toFixed(1)} / max ${x.max.toFixed(1)} ms (n=${x.n})`;
  const late = lateBeats(r);
  const byKind = (k: FaultKind): string => `${r.faults.filter((x) => x.kind === k).length} ${k}`;
  return [
    `soak on ${r.vm} (${r.accel.toUpperCase()}), stress for ${r.windowS.toFixed(1)} s in ${r.stressDir}: ${JSON.stringify(r.stress)}`,
    `heartbeats: ${r.heartbeats} stored of ~${r.heartbeatsExpected} due (every ${HEARTBEAT_INTERVAL_MS} ms)`,
    `heartbeat delay at the host: ${f(r.delayMs)}`,
    `  of it the guest's timer: ${f(r.guestTimerDelayMs)}; transit jitter: ${f(r.transitJitterMs)}`,
    `  worst beats: ${r.worst.map((w) => `#${w.count} +${w.delayMs.toFixed(0)} ms (guest timer ${w.guestTimerMs.toFixed(0)}, vCPU waited ${w.vcpuWaitMs.toFixed(0)} on the host) at ${(w.atMs / 1000).toFixed(1)} s`).join(', ')}`,
    `  beats >= ${LATE_MS} ms late: ${late.n}; the vCPU's host run-queue wait in their gaps ${f(late.vcpuWaitMs)}, in the others' ${f(late.otherVcpuWaitMs)}`,
    `host run-queue wait over the window: vCPU ${r.hostWait.vcpuPct.toFixed(1)} %, vesperd ${r.hostWait.vesperdPct.toFixed(1)} %`,
    `false alarms: ${r.falseAlarms.length}${r.falseAlarms.length ? ` ${JSON.stringify(r.falseAlarms)}` : ''}; agent restarts: ${r.agentRestarts}; records lost: ${r.recordsLost}`,
    `faults injected: ${r.faults.length} (${byKind('segv')}, ${byKind('crash')}, ${byKind('oom')}), missed: ${r.missed.length}${r.missed.length ? ` ${JSON.stringify(r.missed)}` : ''}, refused: ${r.faultErrors.length}${r.faultErrors.length ? ` ${JSON.stringify(r.faultErrors)}` : ''}`,
    `OOM kills: ${r.oomKills.length} (${r.oomKills.map((k) => `${k.comm}/${k.pid}${k.agent ? ' AGENT' : ''}`).join(', ')}); agent pids ${r.agentPids.join(', ')}; agent the victim: ${r.agentOomVictim}`,
  ].join('\n');
}
