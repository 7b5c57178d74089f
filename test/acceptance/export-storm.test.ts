// Export sinks under a storm, with a receiver outage and a vesperd crash: a real vesperd (the
// built bundle) links to a real agent in host mode (through a libvirt test-driver domain whose
// channel is the agent's socket), whose signal probe reads real kernel trace events for a storm
// of SIGUSR1s. The sinks go to a real HTTP server (a node child process) and a real rsyslogd
// (Debian's, started here with its own config on a loopback port, imptcp with octet counting,
// writing to a file). Both receivers are stopped in the middle of the storm, vesperd is SIGKILLed
// and started again, the receivers come back: every stored event must have reached both, per
// VM in order (first arrivals), at least once, exactly once after de-duplication by id.
// Then `vesper store backup` during ingest: the copy opens and holds every event stored before.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { VesperdProcess, writeVesperdConfig } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const RSYSLOGD = ['/usr/sbin/rsyslogd', '/sbin/rsyslogd'].find((p) => existsSync(p));
const why =
  whyNoKernelAccess() ||
  (spawnSync('virsh', ['--version']).status !== 0
    ? 'needs virsh (the libvirt test driver)'
    : !RSYSLOGD
      ? 'needs rsyslogd (Debian package rsyslog; scripts/ensure-deps.sh installs it)'
      : '');
if (why) console.warn(`SKIP export storm test: ${why}`);

const STORM = 12_000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const RECEIVER = `
import { createServer } from 'node:http';
import { appendFileSync } from 'node:fs';
const [port, out] = process.argv.slice(2);
createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const b = JSON.parse(Buffer.concat(chunks).toString());
    appendFileSync(out, b.events.map((e) => e.eventId + ' ' + e.vm + ' ' + e.id + '\\n').join(''));
    res.end('ok');
  });
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

/** A child process that says "ready" on stdout (or exits): resolved once it did. */
function started(p: ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    p.stdout?.on('data', (c: Buffer) => c.toString().includes('ready') && resolve());
    p.once('exit', (code) => reject(new Error(`${what} exited (${code}) before it was ready`)));
  });
}

interface Arrival {
  eventId: string;
  vm: string;
  id: number;
}

function webhookArrivals(file: string): Arrival[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [eventId, vm, id] = l.split(' ');
      return { eventId: eventId!, vm: vm!, id: Number(id) };
    });
}

function syslogArrivals(file: string): Arrival[] {
  if (!existsSync(file)) return [];
  const out: Arrival[] = [];
  for (const l of readFileSync(file, 'utf8').split('\n')) {
    const m = /\[vesper@32473 id="([^"]+)" vm="([^"]*)"/.exec(l);
    if (!m) continue;
    out.push({ eventId: m[1]!, vm: m[2]!, id: Number(m[1]!.slice(m[1]!.lastIndexOf('/') + 1)) });
  }
  return out;
}

/** What de-duplication by id keeps (the first arrival), and whether each VM's ids rise along it. */
function dedup(arr: Arrival[]): { ids: Set<string>; outOfOrder: string[] } {
  const ids = new Set<string>();
  const lastOfVm = new Map<string, number>();
  const outOfOrder: string[] = [];
  for (const a of arr) {
    if (ids.has(a.eventId)) continue;
    ids.add(a.eventId);
    const last = lastOfVm.get(a.vm) ?? 0;
    if (a.id <= last) outOfOrder.push(`${a.vm}: ${a.id} after ${last}`);
    lastOfVm.set(a.vm, a.id);
  }
  return { ids, outOfOrder };
}

describe.skipIf(Boolean(why))('export sinks through an outage and a crash', () => {
  const dir = mkdtempSync('/tmp/vesperd-export-');
  const vm = `exp-${process.pid}`;
  let agent: LocalAgent | null = null;
  let d: VesperdProcess | null = null;
  let target: ChildProcess | null = null;
  let receiver: ChildProcess | null = null;
  let rsyslog: ChildProcess | null = null;
  const webhookOut = join(dir, 'webhook.out');
  const syslogOut = join(dir, 'syslog.out');
  let httpPort = 0;
  let syslogPort = 0;

  async function startReceiver(): Promise<void> {
    const p = spawn(process.execPath, [join(dir, 'receiver.mjs'), String(httpPort), webhookOut], { stdio: ['ignore', 'pipe', 'inherit'] });
    receiver = p;
    await started(p, 'the HTTP receiver');
  }

  async function startRsyslog(): Promise<void> {
    const p = spawn(RSYSLOGD!, ['-n', '-f', join(dir, 'rsyslog.conf'), '-i', join(dir, 'rsyslog.pid')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    rsyslog = p;
    // ready when its port takes connections
    await waitFor(
      'rsyslogd listening',
      () =>
        p.exitCode !== null
          ? Promise.reject(new Error(`rsyslogd exited ${p.exitCode}: ${err}`))
          : new Promise<boolean>((resolve) => {
              const s = connect({ host: '127.0.0.1', port: syslogPort });
              s.once('connect', () => (s.destroy(), resolve(true)));
              s.once('error', () => resolve(false));
            }),
      15_000,
      100,
    );
  }

  async function stopChild(p: ChildProcess | null, sig: NodeJS.Signals): Promise<void> {
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(sig);
    await Promise.race([gone, sleep(15_000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }

  afterAll(async () => {
    await d?.killAll();
    await stopChild(receiver, 'SIGKILL');
    await stopChild(rsyslog, 'SIGKILL');
    target?.kill('SIGKILL');
    await agent?.stop();
    // A SIGKILLed vesperd cannot stop its `virsh event` child: it would outlive the test.
    spawnSync('pkill', ['-f', `virsh -c test://${dir}/`]);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('webhook and syslog get every event of a 12,000-event storm, per VM in order, across a receiver outage and a SIGKILL', async () => {
    httpPort = await freePort();
    syslogPort = await freePort();
    writeFileSync(join(dir, 'receiver.mjs'), RECEIVER);
    writeFileSync(
      join(dir, 'rsyslog.conf'),
      `global(workDirectory="${dir}" maxMessageSize="64k")
module(load="imptcp")
template(name="sd" type="string" string="%structured-data%\\t%msg%\\n")
ruleset(name="vesper") { action(type="omfile" file="${syslogOut}" template="sd") }
input(type="imptcp" address="127.0.0.1" port="${syslogPort}" ruleset="vesper")
`,
    );
    await startReceiver();
    await startRsyslog();

    agent = new LocalAgent({ protect: false, traceBufferKb: 4096 });
    await agent.start();
    target = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
    await sleep(300);
    const nodeXml = join(dir, 'node.xml');
    writeFileSync(
      nodeXml,
      `<node><domain type='test'><name>${vm}</name><memory>65536</memory><os><type>hvm</type></os><devices>
  <channel type='unix'><source mode='bind' path='${agent.socket}'/><target type='virtio' name='org.vesper.agent.0'/></channel>
</devices></domain></node>
`,
    );
    const socket = join(dir, 'vesperd.sock');
    const storePath = join(dir, 'events.db');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: storePath,
      domains: [vm],
      more: {
        libvirt: { uri: `test://${nodeXml}` },
        attach: [{ vm, probes: [{ name: 'signal', params: { signals: 'USR1', include_ignored: 'true', comms: 'sleep' } }] }],
        sinks: [
          { name: 'hook', kind: 'webhook', url: `http://127.0.0.1:${httpPort}/events`, start: 'oldest', batch_max: 500, retry_max: '1s' },
          {
            name: 'sys',
            kind: 'syslog',
            transport: 'tcp',
            address: `127.0.0.1:${syslogPort}`,
            start: 'oldest',
            batch_max: 500,
            retry_max: '1s',
          },
        ],
      },
    });
    d = new VesperdProcess(config, socket, join(agent.dir, 'keys'));
    await d.start();
    const signalLoaded = async (): Promise<boolean> => {
      const s = await d!.json<{ link: string; attached: Array<{ name: string; loaded: boolean }> }>(['status', vm]).catch(() => null);
      return s?.link === 'connected' && s.attached.some((a) => a.name === 'signal' && a.loaded);
    };
    await waitFor('the signal probe loaded in the agent', signalLoaded, 60_000, 250);

    // The storm: 12,000 SIGUSR1 in bursts, about 8 s long.
    let sent = 0;
    const storm = (async () => {
      while (sent < STORM) {
        const n = Math.min(150, STORM - sent);
        for (let i = 0; i < n; i++) process.kill(target.pid!, 'SIGUSR1');
        sent += n;
        await sleep(100);
      }
    })();
    await waitFor('2,000 events at the webhook', () => webhookArrivals(webhookOut).length >= 2000, 60_000, 50);
    expect(sent).toBeLessThan(STORM); // the receivers go down mid-storm
    await stopChild(receiver, 'SIGKILL'); // the HTTP server dies
    await stopChild(rsyslog, 'SIGTERM'); // rsyslog is stopped as an operator stops it
    const outageAt = sent;
    // the outage is seen: both sinks fail and retry while the storm goes on
    type Sinks = {
      sinks: Array<{ name: string; backlog: number; cursor: number; failures: number; lost: number; lastError: string | null }>;
    };
    const during = await waitFor(
      'both sinks failing',
      async () => {
        const s = await d!.json<Sinks>(['status']);
        return s.sinks.length === 2 && s.sinks.every((k) => k.failures > 0 && k.lastError) ? s : false;
      },
      30_000,
      100,
    );
    console.warn(`export outage at ${outageAt} signals sent: ${JSON.stringify(during.sinks.map((s) => [s.name, s.backlog, s.lastError]))}`);
    d.signal('SIGKILL');
    await waitFor('vesperd gone', () => d!.pid === 0, 10_000, 20);
    await sleep(500);
    await d.start();
    await sleep(1000);
    await startReceiver();
    await startRsyslog();
    await storm;
    expect(outageAt).toBeGreaterThan(0);

    // Every stored event delivered to both: the sinks' backlog is 0 in `vesper status`.
    const storeSignals = (): number =>
      (openStoreForSql(storePath).prepare("SELECT count(*) FROM events WHERE plugin = 'signal'").pluck().get() as number) ?? 0;
    await waitFor('the storm stored', () => storeSignals() >= 10_000, 60_000, 250);
    const last = await waitFor(
      'both sinks caught up',
      async () => {
        const s = await d!.json<Sinks>(['status']);
        return s.sinks.length === 2 && s.sinks.every((k) => k.backlog === 0) ? s : false;
      },
      90_000,
      250,
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(await d!.json<Sinks>(['status']).catch(() => null))}\n${d!.log.slice(-3000)}`);
    });
    expect(last.sinks.map((s) => s.lost)).toEqual([0, 0]);

    await d.stop();
    await stopChild(rsyslog, 'SIGTERM'); // flushes its file
    const db = openStoreForSql(storePath);
    const stored = db.prepare('SELECT id, vm FROM events ORDER BY id').all() as Array<{ id: number; vm: string }>;
    const signals = db.prepare("SELECT count(*) FROM events WHERE plugin = 'signal'").pluck().get() as number;
    db.close();
    expect(signals).toBeGreaterThanOrEqual(10_000);
    const host = webhookArrivals(webhookOut)[0]!.eventId.split('/')[0]!;
    const want = stored.map((r) => `${host}/${r.id}`);

    for (const [name, arrivals] of [
      ['webhook', webhookArrivals(webhookOut)],
      ['syslog', syslogArrivals(syslogOut)],
    ] as const) {
      const { ids, outOfOrder } = dedup(arrivals);
      const missing = want.filter((id) => !ids.has(id));
      console.warn(
        `export ${name}: ${stored.length} stored (${signals} signal), ${arrivals.length} arrivals, ${ids.size} distinct, ${arrivals.length - ids.size} duplicates`,
      );
      expect(missing.slice(0, 10), `${name}: missing ${missing.length}`).toEqual([]);
      expect(outOfOrder.slice(0, 10), `${name}: out of order`).toEqual([]);
      expect(ids.size).toBe(stored.length);
    }
    // the syslog messages' text is the event as JSON
    const line = readFileSync(syslogOut, 'utf8')
      .split('\n')
      .find((l) => l.includes('"plugin":"signal"'))!;
    expect((JSON.parse(line.slice(line.indexOf('\t') + 1)) as { plugin: string }).plugin).toBe('signal');
  }, 300_000);

  it('vesper store backup during ingest: the copy opens and holds every event stored before it began', async () => {
    expect(d, 'the first test started vesperd').not.toBeNull();
    await d!.start();
    let sent = 0;
    let stop = false;
    const storm = (async () => {
      while (!stop && sent < 20_000) {
        for (let i = 0; i < 100; i++) process.kill(target!.pid!, 'SIGUSR1');
        sent += 100;
        await sleep(20);
      }
    })();
    await sleep(1000);
    // the newest event stored (acknowledged to the agent) before the backup is asked for
    const before = await d!.json<{ id: number } | null>(['events', '-n', '1', '--all', '-o', 'json']).catch(() => null);
    const newest = before?.id ?? 0;
    const copy = join(dir, 'backup.db');
    const r = await d!.cli(['store', 'backup', copy]);
    const sentDuring = sent;
    stop = true;
    await storm;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/backed up/);
    expect(newest).toBeGreaterThan(0);
    expect(sentDuring).toBeGreaterThan(0);
    await d!.stop();
    const b = new Database(copy, { readonly: true, fileMustExist: true });
    const live = openStoreForSql(join(dir, 'events.db'));
    try {
      expect(b.pragma('integrity_check', { simple: true })).toBe('ok');
      const liveIds = live.prepare('SELECT id FROM events WHERE id <= ? ORDER BY id').pluck().all(newest) as number[];
      const copyIds = b.prepare('SELECT id FROM events WHERE id <= ? ORDER BY id').pluck().all(newest) as number[];
      expect(copyIds.length).toBe(liveIds.length);
      expect(copyIds).toEqual(liveIds);
      const copyMax = b.prepare('SELECT max(id) FROM events').pluck().get() as number;
      expect(copyMax).toBeGreaterThanOrEqual(newest);
    } finally {
      b.close();
      live.close();
    }
    // the refusal: an existing file is not overwritten
    await d!.start();
    const again = await d!.cli(['store', 'backup', copy]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/VSP_USAGE.*exists/);
  }, 120_000);
});
