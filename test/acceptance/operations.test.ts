// vesperd in the operator's stack, against the real thing: one QEMU guest under libvirtd with
// the agent and its signal probe, vesperd as users run it, Debian's Prometheus scraping its
// metrics endpoint, and systemd's notification protocol.
//  - a real SIGSEGV in the guest is counted in vesper_events_total and its detection latency
//    observed, as Prometheus's HTTP API answers; promtool accepts the shipped alert rules;
//  - readiness: systemd is not PID 1 on this machine, so `systemd-run --service-type=notify`
//    cannot host vesperd; the equivalent here is the service manager's end made by the test,
//    a unix datagram socket at NOTIFY_SOCKET (held by a Python receiver: Node has no unix
//    datagram sockets) with WATCHDOG_USEC set, which must see READY=1 and WATCHDOG=1;
//  - SIGHUP with a changed filter applies it without the guest's link dropping, and SIGHUP with
//    a broken file keeps the old config and logs why.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmRig } from '../rigs/vm/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { NotifySocket, systemdIsPid1, whyNoNotifyReceiver } from '../helpers/notify-socket.js';
import { Prometheus, freePort, whyNoPrometheus } from '../helpers/prometheus.js';
import { VesperdProcess, writeVesperdConfig, type EventLine, type VesperdConfigOptions } from '../helpers/vesperd-process.js';
import { waitFor } from '../helpers/wait.js';

const RULES = resolve(import.meta.dirname, '../../host/metrics/vesper.rules.yml');
const why =
  process.getuid?.() !== 0
    ? 'needs root (libvirtd, QEMU)'
    : process.arch !== 'x64'
      ? 'needs an x86-64 host'
      : whyNoPrometheus() || whyNoNotifyReceiver();
if (why) console.warn(`SKIP operations acceptance tests: ${why}`);

describe.skipIf(Boolean(why))('vesperd with Prometheus, systemd notify and SIGHUP (real guest)', () => {
  let rig: VmRig;
  let dir: string;
  let d: VesperdProcess;
  let prom: Prometheus;
  let notify: NotifySocket;
  let cfg: VesperdConfigOptions;
  let configPath: string;

  const signalEvents = async (): Promise<EventLine<{ signal?: { sig?: number; target?: { pid?: number } } }>[]> =>
    (await d.ok(['events', '--vm', rig.name, '--plugin', 'signal', '--all', '--limit', '1000', '-o', 'json']))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as EventLine<{ signal?: { sig?: number; target?: { pid?: number } } }>);
  const channelEvents = async (): Promise<string[]> =>
    (await d.ok(['events', '--vm', rig.name, '--plugin', 'channel', '--all', '-o', 'json']))
      .split('\n')
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as EventLine).event);
  const segvOf = async (): Promise<number> => {
    const [pid] = numbersIn(await rig.fault('segv'));
    return pid!;
  };
  const stored = (pid: number) =>
    waitFor(
      `SIGSEGV of ${pid} stored`,
      async () => (await signalEvents()).find((e) => e.payload?.signal?.sig === 11 && e.payload.signal.target?.pid === pid),
      30_000,
      500,
    );
  const one = async (q: string): Promise<number> => (await prom.query(q))[0]?.value ?? NaN;

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, x) => console.warn(`vm rig: ${s}${x ? `: ${x}` : ''}`) });
    await rig.prepare();
    (await rig.boot()).close(); // vesperd keeps the link from now on
    dir = mkdtempSync('/tmp/vesper-operations-');
    chmodSync(dir, 0o755);
    const port = await freePort();
    const socket = join(dir, 'run', 'vesperd.sock');
    cfg = { socket, store: join(dir, 'events.db'), domains: [rig.name], more: { metrics: { listen: `127.0.0.1:${port}` } } };
    configPath = writeVesperdConfig(join(dir, 'vesper.yaml'), cfg);
    notify = new NotifySocket(join(dir, 'notify.sock'), join(dir, 'notify.log'));
    await notify.start();
    d = new VesperdProcess(configPath, socket);
    d.env = { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '1000000' };
    await d.start();
    await d.waitLinked(rig.name, 60_000, 500);
    await d.ok(['attach', rig.name, 'signal']);
    await waitFor(
      'signal probe loaded',
      () =>
        d.json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name]).then(
          (s) => s.attached.some((a) => a.loaded),
          () => false,
        ),
      60_000,
      500,
    );
    prom = new Prometheus(join(dir, 'prometheus'), `127.0.0.1:${port}`);
    await prom.start();
  }, 300_000);

  afterAll(async () => {
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${d?.trail.join('\n')}\n${d?.log.slice(-8000) ?? ''}\n${prom?.log ?? ''}`);
    await d?.killAll();
    await prom?.stop();
    notify?.stop();
    await rig?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('tells the service manager READY=1 once it serves, and feeds the watchdog (no systemd as PID 1: the test is the manager)', async () => {
    if (systemdIsPid1()) console.warn('systemd runs this machine; this test still plays the manager itself');
    const msgs = await waitFor(
      'READY=1 and two WATCHDOG=1',
      () => {
        const m = notify.messages();
        return m.some((x) => x.includes('READY=1')) && m.filter((x) => x.includes('WATCHDOG=1')).length >= 2 ? m : undefined;
      },
      15_000,
      200,
    );
    const ready = msgs.find((x) => x.includes('READY=1'))!;
    expect(ready).toContain(`MAINPID=${d.pid}`); // sent for vesperd's pid (systemd-notify --pid)
    expect(ready.some((l) => l.startsWith('STATUS=vesperd '))).toBe(true);
    // READY came after the API answered: the CLI got through before the test read it (start() waits for that)
    expect(d.log).toMatch(/"msg":"vesperd \S+ started \(config [^)]*vesper\.yaml\)"/);
  });

  it('a real SIGSEGV in the guest: Prometheus finds it counted and its detection latency observed', async () => {
    expect(execFileSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' })).toContain('SUCCESS');
    await waitFor('Prometheus scrapes vesperd', async () => (await prom.targetHealth()) === 'up', 30_000, 500).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${await prom.targetHealth()}`);
    });
    const sel = `vm="${rig.name}",plugin="signal",event="signal"`;
    const before = (await one(`sum(vesper_events_total{${sel}})`)) || 0;
    const pid = await segvOf();
    const ev = await stored(pid);
    expect(ev.disposition).toBe('notify');
    const counted = await waitFor(
      'the event counted in Prometheus',
      async () => {
        const v = await one(`sum(vesper_events_total{${sel},disposition="notify"})`);
        return v >= before + 1 ? v : undefined;
      },
      30_000,
      1000,
    );
    expect(counted).toBeGreaterThanOrEqual(1);
    const observed = await waitFor(
      'the latency observed',
      async () => {
        const n = await one('vesper_detection_latency_seconds_count{plugin="signal"}');
        return n >= 1 ? n : undefined;
      },
      30_000,
      1000,
    );
    expect(observed).toBeGreaterThanOrEqual(1);
    // a real latency: above zero, under the 10 s top bucket, its quantile computable
    const mean = await one(
      'vesper_detection_latency_seconds_sum{plugin="signal"} / vesper_detection_latency_seconds_count{plugin="signal"}',
    );
    expect(mean).toBeGreaterThan(0);
    expect(mean).toBeLessThan(10);
    const p99 = await one('histogram_quantile(0.99, sum by (le) (vesper_detection_latency_seconds_bucket{plugin="signal"}))');
    expect(p99).toBeGreaterThan(0);
    expect(await one(`vesper_link_up{vm="${rig.name}",transport="virtio"}`)).toBe(1);
    expect(await one('vesper_build_info')).toBe(1);
    console.warn(
      `detection latency of ${observed} signal event(s) in the guest: mean ${(mean * 1000).toFixed(1)} ms, p99 bucket bound ${(p99 * 1000).toFixed(1)} ms`,
    );
  });

  it('SIGHUP with a changed filter applies it without the link dropping; a broken file keeps the old config and says why', async () => {
    const linkEvents = (await channelEvents()).filter((e) => e === 'agent-lost' || e === 'agent-connected').length;
    const agentPid = (await d.json<{ agentPid: number }>(['status', rig.name])).agentPid;
    writeVesperdConfig(configPath, {
      ...cfg,
      more: { ...cfg.more, filters: [{ vm: rig.name, plugin: 'signal', event: 'signal', decision: 'discard' }] },
    });
    d.signal('SIGHUP');
    await waitFor('reload logged', () => d.log.includes('configuration reloaded: applied filters'), 10_000, 100);
    const pid = await segvOf();
    expect((await stored(pid)).disposition).toBe('discard');
    const rules = await d.json<Array<{ plugin: string; decision: string }>>(['filter', 'list']);
    expect(rules).toEqual([expect.objectContaining({ plugin: 'signal', decision: 'discard' })]);

    // a mistake: refused as a whole, the running config (the discard rule) stays
    writeFileSync(configPath, `${readFileSync(configPath, 'utf8')}\nfilterz: []\n`);
    d.signal('SIGHUP');
    await waitFor('refusal logged', () => d.log.includes('configuration NOT reloaded'), 10_000, 100);
    expect(d.log).toMatch(/"code":"VSP_CONFIG_INVALID".*filterz: unknown key \(did you mean \\"filters\\"\?\)/);
    const pid2 = await segvOf();
    expect((await stored(pid2)).disposition).toBe('discard');
    expect(await d.json<unknown[]>(['filter', 'list'])).toHaveLength(1);

    // the link never dropped: no agent-lost/agent-connected since, the same agent process, still linked
    expect((await channelEvents()).filter((e) => e === 'agent-lost' || e === 'agent-connected').length).toBe(linkEvents);
    const st = await d.json<{ link: string; agentPid: number }>(['status', rig.name]);
    expect(st).toMatchObject({ link: 'connected', agentPid });
    // the discarded events are counted as such
    await waitFor(
      'the discard counted',
      async () => ((await one(`sum(vesper_events_total{vm="${rig.name}",plugin="signal",disposition="discard"})`)) >= 2 ? true : undefined),
      30_000,
      1000,
    );
    // RELOADING=1 then READY=1 around the applied reload
    const m = notify
      .messages()
      .map((x) => x.find((l) => l === 'RELOADING=1' || l === 'READY=1'))
      .filter(Boolean);
    expect(m).toEqual(['READY=1', 'RELOADING=1', 'READY=1']);
    const s = await d.json<{ version: string; config: string; uptimeS: number; sinks: unknown[]; metrics: string }>(['status']);
    expect(s.config).toBe(configPath);
    expect(s.uptimeS).toBeGreaterThan(0);
    expect(s.metrics).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});
