// The fleet bus (NATS JetStream) benchmarks, on the bus rig (test/rigs/fleet/bus-rig.ts): three
// nats-server nodes, a replicas-3 stream, each process in a network namespace of its own.
//   fleet.events_per_s           one host (storm-host.ts: a real event store as the outbox and
//                                the nats sink) storing events as fast as it can, through the
//                                cluster, to a subscriber (bus-counter.ts) following the bus:
//                                events over the time from the first commit to the last receipt;
//                                with fleet.events_lost (0: every event reached the subscriber)
//   fleet.publish_to_subscriber_ms.p50/p99  at a steady 500 events/s: from the host's commit
//                                (hostTimeUs) to the subscriber's receipt, same machine clock
//   fleet.outage_events_lost     a 2,000-event storm during which one node is killed and the host
//                                is cut off from the bus for 10 s: events missing afterwards
//   fleet.stored_twice           events the subscriber received more than once across all runs
//                                (a resend the stream's de-duplication let through)
//   fleet.loadavg_1m             the machine's load at the end (it is shared)
import { spawn, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { projectRoot } from '../helpers/project-root.js';
import { BusRig, whyNoBusRig } from '../rigs/fleet/bus-rig.js';
import { sleep } from '../helpers/wait.js';
import { round, type Metrics } from './stats.js';

interface Line {
  [k: string]: unknown;
}

function child(
  ns: string,
  script: string,
  arg: unknown,
  procs: ChildProcess[],
): { p: ChildProcess; lines: Line[]; next: (pred: (l: Line) => boolean, ms: number) => Promise<Line> } {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', join(projectRoot(), script), JSON.stringify(arg)], {
    cwd: projectRoot(),
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  procs.push(p);
  const lines: Line[] = [];
  const waiters: Array<() => void> = [];
  createInterface({ input: p.stdout }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l) as Line);
    } catch {
      return;
    }
    for (const w of waiters.splice(0)) w();
  });
  const next = async (pred: (l: Line) => boolean, ms: number): Promise<Line> => {
    const until = Date.now() + ms;
    for (;;) {
      const hit = lines.find(pred);
      if (hit) return hit;
      if (Date.now() > until || p.exitCode !== null)
        throw new Error(`${script}: no such line within ${ms} ms (last: ${JSON.stringify(lines.at(-1))})`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
  };
  return { p, lines, next };
}

async function oneRun(
  name: string,
  o: { count: number; rate: number; outage?: boolean },
  log: (s: string) => void,
): Promise<{ host: Line; sub: Line; storeFirstMs: number }> {
  const rig = new BusRig();
  const procs: ChildProcess[] = [];
  try {
    await rig.start();
    const h = rig.addHost('h1');
    const s = rig.addHost('sub');
    const servers = rig.urls;
    const sub = child(s.ns, 'test/rigs/fleet/bus-counter.ts', { servers, expect: o.count, timeoutMs: 240_000 }, procs);
    await sub.next((l) => l['ready'] === true, 30_000);
    // Measured from the first event on: the host is connected (it made the stream) and the
    // subscriber is reading before the host stores anything.
    const host = child(
      h.ns,
      'test/rigs/fleet/storm-host.ts',
      {
        store: join(rig.dir, 'h1.db'),
        host: 'h1',
        servers,
        vms: 8,
        count: o.count,
        rate: o.rate,
        replicas: 3,
        batchMax: 5000,
        waitGo: true,
      },
      procs,
    );
    await host.next((l) => l['open'] === true, 60_000);
    await sub.next((l) => l['reading'] === true, 60_000);
    const startMs = Date.now();
    host.p.stdin!.write('go\n');
    if (o.outage) {
      await sleep(1500);
      rig.killNode(rig.nodes[1]!);
      rig.cut(h.ns, true);
      await sleep(10_000);
      rig.cut(h.ns, false);
    }
    const done = await host.next((l) => l['done'] === true, 240_000);
    const got = await sub.next((l) => 'received' in l, 240_000);
    log(`fleet ${name}: host ${JSON.stringify(done)}; subscriber ${JSON.stringify(got)}`);
    return { host: done, sub: got, storeFirstMs: startMs };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    rig.stop();
  }
}

export async function fleetBench(m: Metrics, o: { log: (s: string) => void; events?: number }): Promise<void> {
  const why = whyNoBusRig();
  if (why) {
    o.log(`fleet benchmarks skipped: ${why}`);
    return;
  }
  let twice = 0;
  const n = o.events ?? 200_000;
  const fast = await oneRun('throughput', { count: n, rate: 0 }, o.log);
  // from the host's first event to the subscriber's last
  m['fleet.events_per_s'] = Math.round(Number(fast.sub['distinct']) / ((Number(fast.sub['lastMs']) - fast.storeFirstMs) / 1000));
  m['fleet.events_lost'] = n - Number(fast.sub['distinct']);
  twice += Number(fast.sub['twice']);

  const steady = await oneRun('latency', { count: 5000, rate: 500 }, o.log);
  m['fleet.publish_to_subscriber_ms.p50'] = round(Number(steady.sub['p50']), 1);
  m['fleet.publish_to_subscriber_ms.p99'] = round(Number(steady.sub['p99']), 1);
  twice += Number(steady.sub['twice']);

  const outage = await oneRun('outage', { count: 4000, rate: 300, outage: true }, o.log);
  m['fleet.outage_events_lost'] = 4000 - Number(outage.sub['distinct']);
  m['fleet.outage_host_retries'] = Number(outage.host['failures']);
  twice += Number(outage.sub['twice']);
  m['fleet.stored_twice'] = twice;
  m['fleet.loadavg_1m'] = round(loadavg()[0]!, 2);
}
