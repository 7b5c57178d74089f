// Manager benchmarks: vesperd's ingest path (decode, filter, store, deliver), many guests at
// once (simulated agents in one child process speaking the real protocol over real unix
// sockets), and SIGKILL of the ingest process while a real host-mode agent streams.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import Database from 'better-sqlite3';
import pino from 'pino';
import { AgentClient, type AgentRecord } from '../../host/channel/agent-client.js';
import { GuestLink } from '../../host/daemon/guest-link.js';
import { IngestBatcher } from '../../host/daemon/ingest.js';
import { eventOfRecord } from '../../host/daemon/record-event.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { FilterTable } from '../../host/notify/filter.js';
import { NotificationFramework } from '../../host/notify/framework.js';
import { EventQueue } from '../../host/notify/queue.js';
import { EventStore } from '../../host/store/event-store.js';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, encodeMessage, v1 } from '../../proto/codec.js';
import { encodeFrame } from '../../proto/frame.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { mono, pct, round, type Metrics } from './stats.js';

const SIM = join(import.meta.dirname, 'sim-agents.ts');

/** A manager core as vesperd builds it: framework, store, queue, one subscriber draining. */
function managerCore(dir: string) {
  const store = EventStore.open(join(dir, 'events.db'), {
    sync: (process.env['VESPER_BENCH_SYNC'] as 'full' | 'normal' | undefined) ?? 'full',
  });
  const queue = new EventQueue();
  const filters = new FilterTable();
  // Filters as a real table has them: a discard and an action that does not match.
  filters.set({ vm: '*', plugin: 'heartbeat', instance: '*', event: '*', decision: { kind: 'discard' } });
  filters.set({ vm: 'none', plugin: 'signal', instance: 0, event: 'signal', decision: { kind: 'action', action: 'restart', args: [] } });
  const framework = new NotificationFramework({ filters, queue, store, actions: { run: () => undefined } });
  const batcher = new IngestBatcher(framework);
  return { store, queue, framework, batcher };
}

/** Records per second through decode, filter, store and delivery to a subscriber; one core. */
async function ingest(m: Metrics): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-ingest-'));
  const core = managerCore(dir);
  try {
    const sub = core.queue.subscribe();
    let delivered = 0;
    sub.onReadable(() => (delivered += sub.take(100_000).events.length));
    const a = new PassThrough();
    const b = new PassThrough();
    const c = new AgentClient(Duplex.from({ readable: a, writable: b }), { autoAck: false });
    let acked = 0;
    c.on('batch', (rs: AgentRecord[]) => {
      const now = Date.now() * 1000;
      core.batcher.push(
        rs.map((r) => eventOfRecord('bench-vm', 'boot/1', r, now)),
        () => (acked = rs[rs.length - 1]!.seq),
      );
    });
    const push = (buf: Buffer): void => (c as unknown as { decoder: { push(b: Buffer): void } }).decoder.push(buf);
    push(
      encodeFrame(
        encodeMessage({
          hello: { protocolVersion: PROTOCOL_VERSION, loaded: [{ handle: 1, name: 'signal', events: [{ id: 1, name: 'signal' }] }] },
        }),
      ),
    );
    // 400 frames of 512 records, as an agent batches a storm.
    const frames: Buffer[] = [];
    let seq = 1;
    for (let f = 0; f < 400; f++) {
      const batch: Uint8Array[] = [];
      for (let i = 0; i < 512; i++)
        batch.push(
          v1.Record.encode({
            seq: seq++,
            monoNs: 1e9 + seq,
            wallNs: 1.7e18 + seq * 1000,
            handle: 1,
            eventId: 1,
            signal: { sig: 10, code: 0, result: 1, group: true, target: { pid: 1234, comm: 'sleep' }, sender: { pid: 999, comm: 'bench' } },
          }).finish(),
        );
      frames.push(encodeBatchFrame(batch));
    }
    const total = seq - 1;
    const t0 = mono();
    for (const f of frames) {
      push(f);
      await new Promise((r) => setImmediate(r)); // let the group commit and the subscriber run
    }
    core.batcher.flush();
    await waitFor('delivered', () => delivered >= total, 60_000, 1);
    const s = (mono() - t0) / 1e9;
    m['manager.ingest_records_per_s'] = Math.round(total / s);
    m['manager.ingest_acked'] = acked === total ? 1 : 0;
    c.close();
  } finally {
    core.store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** N simulated guests at R events/s each, one GuestLink per guest, as vesperd keeps them. */
async function sessions(m: Metrics, n: number, rate: number, seconds: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-sess-'));
  const core = managerCore(dir);
  const sim = fork(SIM, [dir, String(n), String(rate)], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const links: GuestLink[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      sim.once('message', () => resolve());
      sim.once('exit', (c) => reject(new Error(`simulated agents exited: ${c}`)));
    });
    const key = loadOrCreateHostKey(join(dir, 'keys'));
    const log = pino({ level: 'silent' });
    for (let i = 0; i < n; i++) {
      const link = new GuestLink(`sim-${i}`, join(dir, `a${i}.sock`), {
        key,
        batcher: core.batcher,
        heldFor: (vm, run) => core.store.highestSeq(vm, run),
        hostEvent: (e) => core.batcher.push([e], () => undefined),
        log,
        keepaliveMs: 1000,
      });
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
    const w0 = mono();
    const ev0 = core.framework.counters().ingested;
    await sleep(seconds * 1000);
    const cpu = process.cpuUsage(cpu0);
    const wall = (mono() - w0) / 1e9;
    measuring = false;
    const events = core.framework.counters().ingested - ev0;
    m['manager.sessions'] = links.filter((l) => l.state === 'connected').length;
    m['manager.sessions_events_per_s'] = Math.round(events / wall);
    m['manager.sessions_cpu_pct'] = round((100 * (cpu.user + cpu.system)) / 1e6 / wall, 1);
    m['manager.event_to_subscriber_ms.p50'] = round(pct(lat, 50), 3);
    m['manager.event_to_subscriber_ms.p99'] = round(pct(lat, 99), 3);
  } finally {
    for (const l of links) l.stop();
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
    const db = new Database(join(dir, 'events.db'), { readonly: true });
    try {
      const count = (): number =>
        (
          db
            .prepare(
              "SELECT count(DISTINCT seq) AS n FROM events WHERE plugin = 'signal' AND json_extract(payload, '$.signal.target.pid') = ?",
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
          "SELECT coalesce(sum(json_extract(payload, '$.loss.count')), 0) AS n FROM events WHERE plugin = 'channel' AND event = 'records-lost'",
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
  }
  if (o.want('manager.sessions') || o.want('manager.event_to')) {
    o.log('manager: 1,000 simulated guests at 100 events/s');
    await sessions(m, 1000, 100, 10);
  }
  if (o.kernel && o.want('manager.kill9')) {
    o.log('manager: SIGKILL during a stream');
    await kill9(m);
  }
}
