// The fleet bus against the real thing: a three-node NATS JetStream cluster (Debian's
// nats-server, each node in a network namespace of its own) and three hosts, each in its own
// namespace with a real event store as the outbox and the nats sink publishing from it (a
// replicas-3 stream). A `vesper fleet events -f` subscriber in a fourth namespace follows the
// bus. In the middle of a storm one NATS node is killed and one host is cut off from the bus for
// 30 s. Afterwards every event of every host is in the stream exactly once, each VM's in the
// order its host stored them, and the subscriber saw every one (before the follower made a new
// consumer when its own died with its node, it stalled there for good).
// Then `vesper fleet analyze` of a VM that failed on one host and was started on another, both
// hosts publishing their libvirt events (as vesperd makes them) with clocks that disagree: one
// timeline on the bus's clock, in the order things happened, each host's clock said.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import type { Analysis } from '../../host/analysis/types.js';
import type { HostClock } from '../../host/fleet/analyze.js';
import { projectRoot } from '../helpers/project-root.js';
import { BusRig, whyNoBusRig } from '../rigs/fleet/bus-rig.js';
import { VESPER } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = whyNoBusRig();
if (why) console.warn(`SKIP fleet bus tests: ${why}`);

const HOSTS = 3;
const PER_HOST = 6000;
const RATE = 150; // per host per second: a 40 s storm, with the outage in the middle
const VMS = 4;
const OUTAGE_MS = 30_000;

interface HostLine {
  host: string;
  appended: number;
  delivered: number;
  failures: number;
  lastError: string | null;
  done: boolean;
}

interface Seen {
  host: string;
  vm: string;
  id: number;
  eventId: string;
  streamSeq: number;
  payload: { n: number };
}

function jsonLines<T>(p: ChildProcess, onLine: (v: T) => void): void {
  createInterface({ input: p.stdout! }).on('line', (l) => {
    try {
      onLine(JSON.parse(l) as T);
    } catch {
      /* a line that is not JSON (a header) */
    }
  });
}

function hostProcess(ns: string, opts: Record<string, unknown>): ChildProcess {
  return spawn(
    'ip',
    ['netns', 'exec', ns, process.execPath, '--import', 'tsx', join(projectRoot(), 'test/rigs/fleet/storm-host.ts'), JSON.stringify(opts)],
    {
      cwd: projectRoot(),
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
}

describe.skipIf(why !== '')('fleet bus: three JetStream nodes, three hosts, a node killed and a host cut off', () => {
  const rig = new BusRig();
  const procs: ChildProcess[] = [];
  afterAll(() => {
    for (const p of procs) p.kill('SIGKILL');
    rig.stop();
  });

  it('every event reaches the subscriber and is in the stream exactly once, per VM in order', { timeout: 300_000 }, async () => {
    await rig.start();
    const servers = rig.urls;
    const hosts = Array.from({ length: HOSTS }, (_, i) => ({ name: `h${i + 1}`, ...rig.addHost(`h${i + 1}`) }));
    const sub = rig.addHost('sub');
    const last = new Map<string, HostLine>();
    const stderr: string[] = [];
    for (const h of hosts) {
      const opts = { store: join(rig.dir, `${h.name}.db`), host: h.name, servers, vms: VMS, count: PER_HOST, rate: RATE, replicas: 3 };
      const p = hostProcess(h.ns, opts);
      procs.push(p);
      p.stderr!.on('data', (d: Buffer) => stderr.push(`${h.name}: ${d.toString()}`));
      jsonLines<HostLine>(p, (l) => last.set(l.host, l));
    }
    // The stream exists once a host delivered (the sinks create it, replicas 3).
    await waitFor('a first delivery', () => [...last.values()].some((l) => l.delivered > 0), 60_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}; hosts: ${JSON.stringify([...last.values()])}; stderr: ${stderr.join('')}`);
    });
    const seen: Seen[] = [];
    const follower = spawn(
      'ip',
      ['netns', 'exec', sub.ns, process.execPath, VESPER, 'fleet', 'events', '-f', '-o', 'json', '--bus', servers.join(',')],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    procs.push(follower);
    follower.stderr.on('data', (d: Buffer) => stderr.push(`follower: ${d.toString()}`));
    jsonLines<Seen>(follower, (e) => seen.push(e));

    // Mid-storm: a NATS node dies for good, and h2 is off the bus for 30 s. The node killed is the
    // one the follower reads from: its consumer (an R1 ephemeral, on one node) dies with it.
    await sleep(8000);
    const victim = await waitFor("the node of the follower's consumer", () => rig.consumerNodes('VESPER')[0], 20_000, 250);
    const leader = rig.streamLeader('VESPER');
    const seenAtKill = seen.length;
    expect(seenAtKill).toBeGreaterThan(0);
    rig.killNode(victim);
    await sleep(2000);
    rig.cut(hosts[1]!.ns, true);
    const cutAt = last.get('h2')?.delivered ?? 0;
    await sleep(OUTAGE_MS);
    const duringOutage = last.get('h2')!;
    rig.cut(hosts[1]!.ns, false);
    // The cut-off host kept storing: the store is the outbox.
    expect(duringOutage.appended).toBeGreaterThan(cutAt);
    expect(duringOutage.failures).toBeGreaterThan(0);

    await waitFor('every host done', () => hosts.every((h) => last.get(h.name)?.done), 120_000, 500).catch((err: Error) => {
      throw new Error(`${err.message}; hosts: ${JSON.stringify([...last.values()])}`);
    });
    await waitFor('the subscriber to see every event', () => seen.length >= HOSTS * PER_HOST, 60_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}: saw ${seen.length} of ${HOSTS * PER_HOST}; ${stderr.join('').slice(-2000)}`);
    });

    // The stream, read again from the start by a fresh reader.
    const stored: Seen[] = [];
    const reader = spawn(
      'ip',
      ['netns', 'exec', sub.ns, process.execPath, VESPER, 'fleet', 'events', '-o', 'json', '--bus', servers.join(',')],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    procs.push(reader);
    jsonLines<Seen>(reader, (e) => stored.push(e));
    let readerErr = '';
    reader.stderr.on('data', (d: Buffer) => (readerErr += d.toString()));
    const code = await new Promise<number | null>((r) => reader.on('exit', r));
    expect(code, readerErr).toBe(0);

    for (const [what, list] of [
      ['stream', stored],
      ['subscriber', seen],
    ] as const) {
      const ids = new Set(list.map((e) => e.eventId));
      expect(ids.size, `${what}: distinct events`).toBe(HOSTS * PER_HOST);
      expect(list.length, `${what}: events (a resend stored twice would show here)`).toBe(HOSTS * PER_HOST);
      const lastIdOfVm = new Map<string, number>();
      let outOfOrder = 0;
      for (const e of list) {
        const k = `${e.host}/${e.vm}`;
        if ((lastIdOfVm.get(k) ?? 0) >= e.id) outOfOrder++;
        lastIdOfVm.set(k, e.id);
      }
      expect(outOfOrder, `${what}: events of a VM out of their host's order`).toBe(0);
      expect(lastIdOfVm.size).toBe(HOSTS * VMS);
    }
    const notes = stderr.filter((l) => l.startsWith('follower:'));
    console.info(
      `fleet bus: killed ${victim.name} (stream leader: ${leader || '?'}) when the follower had ${seenAtKill} events; follower notes: ${notes.join('').trim() || 'none'}`,
    );
    // The cut-off host retried and resent: some of its resends were duplicates the stream dropped, or none were in flight.
    console.info(`fleet bus: hosts ${JSON.stringify([...last.values()].map((l) => ({ host: l.host, failures: l.failures })))}`);
  });
});

describe.skipIf(why !== '')('fleet analyze: a VM that failed on one host and was started on another', () => {
  const rig = new BusRig();
  const procs: ChildProcess[] = [];
  afterAll(() => {
    for (const p of procs) p.kill('SIGKILL');
    rig.stop();
  });

  it("shows both hosts' events in one timeline on the bus clock, each host's clock said", { timeout: 120_000 }, async () => {
    await rig.start();
    const servers = rig.urls;
    const line = (what: string): string => `event 'lifecycle' for domain 'web': ${what}`;
    // hA's clock is 20 s ahead, hB's 30 s behind: on their own clocks hB's start comes first.
    const hosts = [
      {
        name: 'hA',
        skew: 20_000,
        script: [
          { atMs: 0, line: line('Started Booted') },
          { atMs: 2000, line: line('Crashed Panicked') },
          { atMs: 2100, line: line('Stopped Crashed') },
        ],
      },
      { name: 'hB', skew: -30_000, script: [{ atMs: 4000, line: line('Started Booted') }] },
    ];
    const done = new Map<string, boolean>();
    let stderr = '';
    for (const h of hosts) {
      const { ns } = rig.addHost(h.name.toLowerCase());
      const opts = {
        store: join(rig.dir, `${h.name}.db`),
        host: h.name,
        servers,
        vms: 1,
        count: 0,
        rate: 0,
        script: h.script,
        clockSkewMs: h.skew,
      };
      const p = hostProcess(ns, opts);
      procs.push(p);
      p.stderr!.on('data', (d: Buffer) => (stderr += `${h.name}: ${d.toString()}`));
      jsonLines<HostLine>(p, (l) => l.done && done.set(h.name, true));
    }
    await waitFor('both hosts published', () => done.size === 2, 60_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}: ${stderr}`);
    });
    const sub = rig.addHost('sub');
    const analyze = async (output: string): Promise<string> => {
      const p = spawn(
        'ip',
        ['netns', 'exec', sub.ns, process.execPath, VESPER, 'fleet', 'analyze', 'web', '-o', output, '--bus', servers.join(',')],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      procs.push(p);
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((r) => p.on('exit', r));
      expect(code, err).toBe(0);
      return out;
    };
    const r = JSON.parse(await analyze('json')) as { analysis: Analysis; hosts: HostClock[]; hostOf: Record<number, string> };
    const timeline = r.analysis.timeline.map((t) => ({
      host: r.hostOf[t.id],
      event: t.event,
      timeUs: t.timeUs,
      description: t.description,
    }));
    expect(timeline.map((t) => `${t.host} ${t.event}`)).toEqual(['hA started', 'hA panicked', 'hA crashed', 'hB started']);
    // on the bus clock, in the order things happened (by the hosts' own clocks hB's start was first)
    const times = timeline.map((t) => t.timeUs);
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    expect(timeline[3]!.timeUs - timeline[1]!.timeUs).toBeGreaterThan(1_000_000); // started 2 s after the panic
    expect(timeline.every((t) => t.description.startsWith(`[${t.host}]`))).toBe(true);
    // each host's clock put on the bus's: bus − host ≈ −skew (plus its quickest publish)
    const offsets = Object.fromEntries(r.hosts.map((h) => [h.host, h.offsetUs / 1000]));
    expect(offsets['hA']).toBeGreaterThan(-20_000);
    expect(offsets['hA']).toBeLessThan(-20_000 + 5000);
    expect(offsets['hB']).toBeGreaterThan(30_000);
    expect(offsets['hB']).toBeLessThan(30_000 + 5000);
    expect(r.analysis.verdicts[0]?.summary).toMatch(/panic/i);
    const text = await analyze('text');
    expect(text).toMatch(/\[hA\].*\n(.*\n)*.*\[hB\]/);
    expect(text).toMatch(/hA: 3 events,.*bus − host clock ≤ -/);
    expect(text).toMatch(/hB: 1 event,.*bus − host clock ≤ \+/);
  });
});
