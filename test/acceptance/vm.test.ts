// A real guest: libvirtd started by the test, QEMU booting Debian's kernel with the agent
// inside, the host reaching it over the virtio-serial channel, real faults caused inside
// the guest by a test-only helper on a second port, and libvirt's own events.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../proto/record.js';
import { GuestSession, type ConnectedInfo } from '../../host/channel/guest-session.js';
import type { LibvirtEvent } from '../../host/libvirt/events.js';
import { VmRig } from '../rigs/vm/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU, apt)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP VM tests: ${why}`);

describe.skipIf(Boolean(why))('a real guest under libvirt', () => {
  let rig: VmRig;
  let session: GuestSession;
  const records: AgentRecord[] = [];
  const events: LibvirtEvent[] = [];
  const connected: ConnectedInfo[] = [];
  const hbLost: number[] = [];
  const find = (pred: (r: AgentRecord) => boolean) => () => records.find(pred);

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, d) => console.warn(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    await rig.prepare();
    rig.events.on('event', (e: LibvirtEvent) => {
      if (e.domain === rig.name) events.push(e);
    });
    const first = await rig.boot();
    first.close(); // the session below keeps the link from now on
    session = new GuestSession({ socket: rig.agentSocket, module: (n) => rig.module(n), maxBackoffMs: 1000 });
    session.on('record', (r) => records.push(r));
    // A failed re-push after a reboot is told only this way: show it.
    session.on('protocolError', (e: Error & { code?: string }) => console.warn(`vm session: ${e.code ?? ''} ${e.message}`));
    session.on('connected', (i) => connected.push(i));
    session.on('heartbeat-lost', (i) => hbLost.push(i.silentMs));
    session.start();
    await session.waitConnected(60_000);
    console.warn(`vm rig: guest ${rig.name} runs under ${rig.accel.toUpperCase()}`);
  }, 600_000);

  afterAll(async () => {
    session?.stop();
    await rig?.stop();
  }, 120_000);

  it('reaches the agent over the virtio-serial channel, in the guest kernel', () => {
    const h = session.client!.hello;
    expect(h.kernelRelease).toMatch(/^6\.1\.0-\d+-amd64$/);
    expect(h.capabilities).toMatchObject({ tracefs: true, kprobeEvents: true, psi: true });
    expect(['kvm', 'tcg']).toContain(rig.accel);
  });

  it('pushes signal, oom, process and kprobe probes and each fault gives the right record', async () => {
    await session.attach({ name: 'signal' });
    await session.attach({ name: 'process', params: { comms: 'vesper-demo-svc,vesper-exit,tail' } });
    await session.attach({ name: 'oom' });
    await session.attach({
      name: 'kprobe',
      params: { spec: '__send_signal_locked sig=%di:s32', filter: 'sig == 15', label: 'send_sigterm' },
    });

    const segv = numbersIn(await rig.fault('segv'));
    const svc = segv[0]!;
    const s = await waitFor(
      'SIGSEGV of the demo service',
      find((r) => r.kind === 'signal' && r.raw.signal?.sig === 11 && r.raw.signal?.target?.pid === svc),
      20_000,
    );
    expect(s.raw.signal).toMatchObject({ senderIsKernel: true, code: 1, target: { comm: 'vesper-demo-svc' } });
    const ex = await waitFor(
      'its exit',
      find((r) => r.kind === 'exit' && r.raw.exit?.task?.pid === svc),
      20_000,
    );
    expect(ex.raw.exit?.signal).toBe(11);

    await sleep(1500); // the guest's init restarts the demo service
    const [sender, target] = numbersIn(await rig.fault('term'));
    const t = await waitFor(
      'SIGTERM record',
      find((r) => r.kind === 'signal' && r.raw.signal?.sig === 15 && r.raw.signal?.target?.pid === target),
      20_000,
    );
    expect(t.raw.signal).toMatchObject({ senderIsKernel: false, sender: { pid: sender } });
    const k = await waitFor(
      'kprobe hit inside the guest',
      find((r) => r.kind === 'kprobe'),
      20_000,
    );
    expect(k.raw.kprobe?.symbol).toBe('__send_signal_locked');

    const [code3] = numbersIn(await rig.fault('exit 3'));
    const e3 = await waitFor(
      'exit code 3',
      find((r) => r.kind === 'exit' && r.raw.exit?.task?.pid === code3),
      20_000,
    );
    expect(e3.raw.exit).toMatchObject({ exitCode: 3, codeKnown: true });

    const [hog] = numbersIn(await rig.fault('oom'));
    const o = await waitFor(
      'OOM record',
      find((r) => r.kind === 'oom' && r.raw.oom?.victim?.pid === hog),
      30_000,
    );
    if (!o.raw.oom?.memcg) console.warn(`vm: OOM record without a memcg: ${JSON.stringify(o.raw.oom)}`);
    expect(o.raw.oom?.victim?.comm).toBe('tail');
    expect(Number(o.raw.oom?.anonRssKb)).toBeGreaterThan(8 * 1024);
    expect(o.raw.oom?.memcg).toContain('vesper-oom');
  });

  it('a userspace hang shows as heartbeat loss while the domain still runs', async () => {
    await session.attach({ name: 'heartbeat', params: { interval_ms: '500' } });
    await waitFor('heartbeats', () => records.some((r) => r.kind === 'heartbeat'), 20_000);
    const before = hbLost.length;
    const evBefore = events.length;
    await rig.fault('hang 8');
    await waitFor('heartbeat loss', () => hbLost.length > before, 20_000);
    expect((await rig.hv.state(rig.name)).state).toMatch(/running/i);
    // The guest's watchdog, fed by userspace, fired and libvirt reported it (action none).
    const wd = await waitFor('watchdog event', () => events.slice(evBefore).find((e) => e.kind === 'watchdog'), 20_000);
    expect(wd.action).toBe('none');
    await session.detach('heartbeat');
    await sleep(9000); // let the hang end before the next test
  });

  it('after a guest reboot the host reconnects and pushes the probes it had', { timeout: 240_000 }, async () => {
    const n = connected.length;
    await rig.fault('reboot'); // the guest reboots itself, as an administrator's reboot would
    await waitFor('reconnect after reboot', () => connected.length > n, 180_000, 200);
    const c = connected.at(-1)!;
    expect(c.agentRestarted).toBe(true);
    expect(events.some((e) => e.kind === 'reboot')).toBe(true); // libvirt saw it too
    expect(c.repushed.sort()).toEqual(['kprobe', 'oom', 'process', 'signal']);
    const list = await session.client!.list();
    expect(list.find((p) => p.name === 'process')?.params['comms']).toBe('vesper-demo-svc,vesper-exit,tail');
  });

  it('a guest kernel panic is reported by libvirt as crashed/panicked', async () => {
    await rig.fault('panic').catch(() => 'no answer: the guest is gone');
    const crashed = await waitFor('crashed event', () => events.find((e) => e.kind === 'panic'), 60_000);
    expect(crashed.event).toBe('Crashed');
    expect(crashed.reason ?? '').toMatch(/panicked/i);
  });
});

describe.skipIf(Boolean(why))('activating a running guest that had no vesper channel', () => {
  let rig: VmRig;
  beforeAll(async () => {
    rig = new VmRig({
      testHelpers: false,
      agentChannel: false,
      onProgress: (s, d) => console.warn(`vm rig (activate): ${s}${d ? `: ${d}` : ''}`),
    });
    await rig.prepare();
  }, 600_000);
  afterAll(async () => {
    await rig?.stop();
  }, 120_000);

  it('hot-plugs the channel into the running domain; the agent inside finds it and answers', { timeout: 240_000 }, async () => {
    await rig.startOnly();
    // Userspace is up when init says so on the serial console.
    await waitFor('guest userspace', () => rig.consoleTail(20_000).includes('agent starting'), 120_000, 200);
    expect(await rig.hv.xml(rig.name)).not.toContain('org.vesper.agent.0');
    await rig.activate();
    expect(await rig.hv.xml(rig.name)).toContain('org.vesper.agent.0');
    const c = await rig.connectAgent(60_000);
    expect(c.hello.kernelRelease).toMatch(/^6\.1\.0-/);
    c.close();
    await rig.deactivate();
    expect(await rig.hv.xml(rig.name)).not.toContain('org.vesper.agent.0');
  });
});
