// Manager benchmarks: vesperd's ingest path (decode, filter, store, deliver), many guests at
// once (simulated agents in one child process speaking the real protocol over real unix
// sockets), and SIGKILL of the ingest process while a real host-mode agent streams.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { DEFAULT_COALESCE_MS, ReadPacer } from '../../host/channel/read-pacer.js';
import { AckCoalescer } from '../../host/daemon/ack-coalescer.js';
import { defaultConfig } from '../../host/config/schema.js';
import { GuestLink } from '../../host/daemon/guest-link.js';
import { DEFAULT_RUNNER_OPTIONS, Exporter } from '../../host/export/exporter.js';
import { FileSink } from '../../host/export/file.js';
import { IngestBatcher } from '../../host/daemon/ingest.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { FilterTable } from '../../host/notify/filter.js';
import { NotificationFramework } from '../../host/notify/framework.js';
import { Metrics as VesperMetrics } from '../../host/metrics/metrics.js';
import { EventQueue } from '../../host/notify/queue.js';
import { EventStore } from '../../host/store/event-store.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { mono, pct, round, type Metrics } from './stats.js';

const SIM = join(import.meta.dirname, 'sim-agents.ts');
const TICKS_PER_S = Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim()) || 100;

/** CPU ticks (user + system) of one thread of a process, from /proc. */
function threadTicks(pid: number, tid: number): number {
  const f = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

/**
 * A manager core as vesperd builds it: framework, store, queue, one subscriber draining; with
 * `withMetrics`, also vesperd's metrics (metrics.listen on) hooked in as vesperd hooks them, and
 * scraped every 5 s (three times Prometheus's default rate) for the cost of the scrapes too.
 */
function managerCore(dir: string, withMetrics = false, withSink = false) {
  const store = EventStore.open(join(dir, 'events.db'), {
    sync: (process.env['VESPER_BENCH_SYNC'] as 'full' | 'normal' | undefined) ?? 'full',
  });
  const queue = new EventQueue();
  const filters = new FilterTable();
  // Filters as a real table has them: a discard and an action that does not match.
  filters.set({ vm: '*', plugin: 'heartbeat', instance: '*', event: '*', decision: { kind: 'discard' } });
  filters.set({ vm: 'none', plugin: 'signal', instance: 0, event: 'signal', decision: { kind: 'action', action: 'restart', args: [] } });
  let batcherRef: IngestBatcher | null = null;
  const metrics = withMetrics
    ? new VesperMetrics({
        links: () => [],
        storeBytes: () => store.liveBytes(),
        storeLimitBytes: () => 1 << 30,
        ingest: () => ({ commits: batcherRef?.commits ?? 0, failures: batcherRef?.failures ?? 0, duplicates: 0, unregisteredPlugin: 0 }),
      })
    : null;
  const framework = new NotificationFramework({
    filters,
    queue,
    store,
    actions: { run: () => undefined },
    ...(metrics ? { tally: metrics.tally } : {}),
  });
  // the read pacer and the ack coalescer vesperd owns and shares between its links
  const pacer = new ReadPacer();
  const acks = new AckCoalescer();
  // With a sink: an exporter on the store, woken after each commit that stored events, as
  // vesperd wires it (a file sink: the cheapest to receive, so the cost measured is vesper's).
  const exporter = withSink ? new Exporter(store, pino({ level: 'silent' }), 'bench') : null;
  const batcher = new IngestBatcher(
    exporter
      ? {
          ingest(events) {
            const r = framework.ingest(events);
            if (r.stored > 0) exporter.wake();
            return r;
          },
          publishNow: () => framework.publishNow(),
        }
      : framework,
    undefined,
    pacer,
  );
  batcherRef = batcher;
  const sinkReady = exporter
    ? exporter.setSinks([
        {
          sink: new FileSink('bench-file', { path: join(dir, 'export.jsonl'), max_size: 256 << 20, keep: 2 }),
          options: DEFAULT_RUNNER_OPTIONS,
        },
      ])
    : Promise.resolve();
  let scrapes = 0;
  const scraper = metrics ? setInterval(() => void metrics.text().then((t) => (scrapes += t.length > 0 ? 1 : 0)), 5000) : null;
  const stop = async (): Promise<void> => {
    if (scraper) clearInterval(scraper);
    await exporter?.close();
  };
  return { store, queue, framework, batcher, pacer, acks, metrics, exporter, sinkReady, stop, scrapes: () => scrapes };
}

/**
 * A GuestLink as vesperd makes one; with `asVesperd`, also with vesperd's default per-guest ingest
 * budget (the ingest figure measures the path's own capacity, so its one link has none).
 */
function simLink(
  core: ReturnType<typeof managerCore>,
  dir: string,
  i: number,
  key: ReturnType<typeof loadOrCreateHostKey>,
  asVesperd = false,
): GuestLink {
  const ingest = defaultConfig().channel.ingest;
  return new GuestLink(`sim-${i}`, join(dir, `a${i}.sock`), {
    key,
    batcher: core.batcher,
    heldFor: (vm, run) => core.store.highestSeq(vm, run),
    hostEvent: (e) => core.batcher.push([e], () => undefined),
    log: pino({ level: 'silent' }),
    keepaliveMs: 1000,
    acks: core.acks,
    pacer: core.pacer,
    ...(core.metrics ? { latency: core.metrics.latency } : {}),
    ...(asVesperd ? { budget: { recordsPerS: ingest.recordsPerS, bytesPerS: ingest.bytesPerS, burstMs: ingest.burst } } : {}),
  });
}

function forkSims(dir: string, args: string[]): ChildProcess {
  return fork(SIM, [dir, ...args], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

async function simsListening(sim: ChildProcess): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    sim.once('message', () => resolve());
    sim.once('exit', (c) => reject(new Error(`simulated agents exited: ${c}`)));
  });
}

/**
 * Records per second through vesperd's whole ingest path for one guest: socket, frame and record
 * decoding, filter, store (committed, fsynced), delivery to a subscriber, and the ack back. A
 * simulated agent in another process sends a storm of 204,800 records as fast as the link takes
 * them; this process (one thread) does all the rest, and its CPU time per record is reported.
 */
async function ingest(m: Metrics, withMetrics = false, pre = 'manager.'): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-ingest-'));
  const core = managerCore(dir, withMetrics);
  const total = 400 * 512;
  const sim = forkSims(dir, ['1', '0', String(total)]);
  let link: GuestLink | null = null;
  try {
    await simsListening(sim);
    const sub = core.queue.subscribe();
    let delivered = 0;
    sub.onReadable(() => (delivered += sub.take(100_000).events.length));
    link = simLink(core, dir, 0, loadOrCreateHostKey(join(dir, 'keys')));
    let t0 = 0;
    let cpu0 = process.cpuUsage();
    link.session.once('connected', () => {
      t0 = mono();
      cpu0 = process.cpuUsage();
    });
    link.start();
    await waitFor('every record delivered', () => delivered >= total, 120_000, 1);
    const s = (mono() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    m[`${pre}ingest_records_per_s`] = Math.round(total / s);
    m[`${pre}ingest_cpu_us_per_record`] = round((cpu.user + cpu.system) / total, 2);
    m[`${pre}ingest_commits`] = core.batcher.commits;
    if (core.metrics) m[`${pre}ingest_events_counted`] = core.metrics.tally.rows().reduce((a, r) => a + r.count, 0);
    await waitFor('all acknowledged', () => core.store.highestSeq('sim-0', link!.session.agentRun ?? '') >= total, 10_000, 5);
  } finally {
    await core.stop();
    link?.stop();
    core.acks.stop();
    sim.kill('SIGKILL');
    core.store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * N simulated guests at R events/s each, one GuestLink per guest, as vesperd keeps them. With
 * `coalesceMs` (vesperd's channel.read_coalesce) the reads are paced as vesperd paces them; the
 * metrics then go under `prefix` (the default setting's are the plain manager.sessions_*).
 */
export async function sessions(
  m: Metrics,
  n: number,
  rate: number,
  seconds: number,
  o: { coalesceMs?: number; prefix?: string; metrics?: boolean; sink?: boolean } = {},
): Promise<void> {
  const pre = o.prefix ?? 'manager.';
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-sess-'));
  const core = managerCore(dir, o.metrics ?? false, o.sink ?? false);
  await core.sinkReady;
  core.pacer.windowMs = o.coalesceMs ?? DEFAULT_COALESCE_MS;
  const sim = forkSims(dir, [String(n), String(rate)]);
  const links: GuestLink[] = [];
  try {
    await simsListening(sim);
    const key = loadOrCreateHostKey(join(dir, 'keys'));
    for (let i = 0; i < n; i++) {
      const link = simLink(core, dir, i, key, true);
      link.start();
      links.push(link);
    }
    await waitFor('every simulated guest linked', () => links.every((l) => l.state === 'connected'), 60_000, 50);
    const sub = core.queue.subscribe();
    const lat: number[] = [];
    let measuring = false;
    sub.onReadable(() => {
      const now = (performance.timeOrigin + performance.now()) * 1000;
      for (const e of sub.take(100_000).events) if (measuring && e.guestTimeUs) lat.push((now - e.guestTimeUs) / 1000);
    });
    await sleep(2000); // settle
    measuring = true;
    const cpu0 = process.cpuUsage();
    const main0 = threadTicks(process.pid, process.pid);
    const sim0 = sim.pid === undefined ? 0 : threadTicks(sim.pid, sim.pid);
    const w0 = mono();
    const ev0 = core.framework.counters().ingested;
    const pauses0 = core.pacer.pauses;
    const commits0 = core.batcher.commits;
    await sleep(seconds * 1000);
    const cpu = process.cpuUsage(cpu0);
    const wall = (mono() - w0) / 1e9;
    const mainPct = (100 * (threadTicks(process.pid, process.pid) - main0)) / TICKS_PER_S / wall;
    const simPct = sim.pid === undefined ? NaN : (100 * (threadTicks(sim.pid, sim.pid) - sim0)) / TICKS_PER_S / wall;
    measuring = false;
    const events = core.framework.counters().ingested - ev0;
    m[`${pre}sessions`] = links.filter((l) => l.state === 'connected').length;
    m[`${pre}sessions_events_per_s`] = Math.round(events / wall);
    m[`${pre}sessions_commits_per_s`] = Math.round((core.batcher.commits - commits0) / wall);
    m[`${pre}sessions_cpu_pct`] = round((100 * (cpu.user + cpu.system)) / 1e6 / wall, 1);
    m[`${pre}sessions_cpu_us_per_event`] = round((cpu.user + cpu.system) / Math.max(1, events), 2);
    m[`${pre}sessions_main_thread_cpu_pct`] = round(mainPct, 1);
    m[`${pre}sessions_system_cpu_pct`] = round((100 * cpu.system) / 1e6 / wall, 1);
    m[`${pre}sessions_sim_cpu_pct`] = round(simPct, 1);
    m[`${pre}sessions_paced_turns_per_s`] = round((core.pacer.pauses - pauses0) / wall, 1);
    m[`${pre}event_to_subscriber_ms.p50`] = round(pct(lat, 50), 3);
    m[`${pre}event_to_subscriber_ms.p99`] = round(pct(lat, 99), 3);
    if (core.metrics) {
      const t = await core.metrics.text();
      let observed = 0;
      for (const x of t.matchAll(/^vesper_detection_latency_seconds_count\{[^}]*\} (\d+)/gm)) observed += Number(x[1]);
      m[`${pre}latency_observed`] = observed;
      m[`${pre}scrapes`] = core.scrapes();
    }
    if (core.exporter) {
      // The sink kept up: what it delivered during the run, and what it still had to deliver.
      const st = core.exporter.states()[0];
      m[`${pre}sink_delivered`] = st?.delivered ?? 0;
      m[`${pre}sink_backlog_at_end`] = st?.backlog ?? NaN;
      m[`${pre}sink_failures`] = st?.failures ?? NaN;
      if (st?.lastError) m[`${pre}sink_last_error`] = st.lastError;
    }
  } finally {
    await core.stop();
    for (const l of links) l.stop();
    core.acks.stop();
    sim.kill('SIGKILL');
    core.store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A real host-mode agent streams signals; the ingest process is SIGKILLed and started again. */
async function kill9(m: Metrics): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-k9-'));
  const { LocalAgent } = await import('../../host/channel/local-agent.js');
  const agent = new LocalAgent({ traceBufferKb: 4096 });
  const target = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
  let child: ChildProcess | null = null;
  const startChild = (): ChildProcess =>
    fork(join(import.meta.dirname, 'ingest-child.ts'), [agent.socket, join(dir, 'events.db'), agent.dir], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
  try {
    await agent.start();
    await sleep(300);
    child = startChild();
    await new Promise((r) => child!.once('message', r)); // linked, signal probe loaded
    const N = 100_000;
    // Paced at about 25,000/s (the host agent's measured ceiling is higher), 4 s in all; the
    // manager is down for 0.5 s of it, less than the agent's ring holds.
    const storm = spawn(
      process.execPath,
      [
        '-e',
        `const t=${target.pid};for(let i=0;i<${N};i++){process.kill(t,'SIGUSR1');if(i%2500===2499){const e=Date.now()+100;while(Date.now()<e);}}`,
      ],
      { stdio: 'inherit' },
    );
    await sleep(1000);
    child.kill('SIGKILL');
    await sleep(500);
    child = startChild();
    await new Promise((r) => storm.once('exit', r));
    const db = openStoreForSql(join(dir, 'events.db'));
    try {
      const count = (): number =>
        (
          db
            .prepare(
              "SELECT count(DISTINCT seq) AS n FROM events WHERE plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
            )
            .get(target.pid) as { n: number }
        ).n;
      await waitFor('stored', () => count() >= N, 30_000, 200).catch(() => undefined);
      // What the manager lost: sequence numbers the agent assigned that the store lacks. What the
      // agent could not record (its kernel buffer overflowing under the storm) it reported as
      // loss records: that is told separately, not the manager's loss.
      const runs = db
        .prepare(
          'SELECT count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM events WHERE agent_run IS NOT NULL GROUP BY agent_run',
        )
        .all() as Array<{ n: number; d: number; lo: number; hi: number }>;
      const agentLost = db
        .prepare(
          "SELECT coalesce(sum(json_extract(payload_json(payload), '$.loss.count')), 0) AS n FROM events WHERE plugin = 'channel' AND event = 'records-lost'",
        )
        .get() as { n: number };
      m['manager.kill9_records'] = runs.reduce((a, r) => a + r.d, 0);
      m['manager.kill9_records_lost'] = runs.reduce((a, r) => a + (r.hi - r.lo + 1 - r.d) + (r.lo - 1), 0);
      m['manager.kill9_records_twice'] = runs.reduce((a, r) => a + r.n - r.d, 0);
      m['manager.kill9_signals_told'] = count();
      m['manager.kill9_agent_reported_lost'] = agentLost.n;
    } finally {
      db.close();
    }
  } finally {
    child?.kill('SIGKILL');
    target.kill('SIGKILL');
    await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function managerBench(
  m: Metrics,
  o: { kernel: boolean; want: (prefix: string) => boolean; log: (s: string) => void },
): Promise<void> {
  if (o.want('manager.ingest')) {
    o.log('manager: ingest');
    await ingest(m);
    o.log('manager: ingest with metrics on (counted per event, latency per record, scraped every 5 s)');
    await ingest(m, true, 'manager.metrics.');
  }
  if (o.want('manager.sessions') || o.want('manager.event_to')) {
    // Side by side in one run: vesperd's default read coalescing, then none.
    o.log(`manager: 1,000 simulated guests at 100 events/s (reads coalesced up to ${DEFAULT_COALESCE_MS} ms, the default)`);
    await sessions(m, 1000, 100, 10);
    o.log('manager: the same without read coalescing (channel.read_coalesce: 0ms)');
    await sessions(m, 1000, 100, 10, { coalesceMs: 0, prefix: 'manager.uncoalesced.' });
    o.log('manager: the same with metrics on (default coalescing)');
    await sessions(m, 1000, 100, 10, { metrics: true, prefix: 'manager.metrics.' });
    o.log('manager: the same with metrics and one export sink (a file) on');
    await sessions(m, 1000, 100, 10, { metrics: true, sink: true, prefix: 'manager.metrics_sink.' });
  }
  if (o.kernel && o.want('manager.kill9')) {
    o.log('manager: SIGKILL during a stream');
    await kill9(m);
  }
}
