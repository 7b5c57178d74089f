// The guest's demo service as a polling monitor sees it: a real guest under libvirt, the
// fault helper asked "svc" over the virtio-serial test port, the Pacemaker monitor script run
// as a process of its own, and faults (a real SIGSEGV, a real memcg OOM kill) that leave the
// service down until the test releases it, so that a 10 s monitor would see them.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../helpers/project-root.js';
import { CHECK_GUEST_SERVICE, virtualDomainPrimitiveXml, writeVirtualDomainFiles } from '../rigs/pacemaker/virtual-domain.js';
import { VmRig } from '../rigs/vm/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP guest service tests: ${why}`);

const AGENT = '/usr/lib/ocf/resource.d/heartbeat/VirtualDomain';
const noAgent = existsSync(AGENT) ? '' : `${AGENT} not installed (apt-get install resource-agents)`;
if (!why && noAgent) console.warn(`SKIP the VirtualDomain monitor check: ${noAgent}`);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** A program in its own process, bounded, with only the environment given (execd gives little). */
const run = (cmd: string, args: string[], env: Record<string, string> = {}, timeoutMs = 30_000): Promise<Run> =>
  new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, cwd: '/' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });

describe.skipIf(Boolean(why))('the guest demo service, as a polling monitor sees it', () => {
  let rig: VmRig;
  let dir: string;
  let configXml: string;
  let monitorScript: string;
  const checkScript = join(projectRoot(), CHECK_GUEST_SERVICE);

  /** The demo service's pid when the guest says it runs, null when it says it is down. */
  const svc = async (): Promise<number | null> => {
    try {
      const [pid] = numbersIn(await rig.fault('svc', 15_000));
      return pid ?? null;
    } catch (err) {
      if (/err svc down/.test((err as Error).message)) return null;
      throw err;
    }
  };
  /** Asks every 300 ms for `ms` and expects "down" every time. */
  const staysDown = async (ms: number): Promise<number> => {
    const end = Date.now() + ms;
    let asked = 0;
    for (; Date.now() < end && asked < 1000; asked++) {
      expect(await svc()).toBeNull();
      await sleep(300);
    }
    return asked;
  };
  const console_ = (): string => {
    try {
      return readFileSync(rig.consoleLog, 'utf8');
    } catch {
      return '';
    }
  };

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, d) => console.warn(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    dir = mkdtempSync('/tmp/vesper-vd-');
    await rig.prepare();
    ({ configXml, monitorScript } = writeVirtualDomainFiles(rig, dir));
    const client = await rig.boot();
    client.close(); // only the test port is used here
    console.warn(`vm rig: guest ${rig.name} runs under ${rig.accel.toUpperCase()}`);
  }, 600_000);

  afterAll(async () => {
    try {
      await rig?.stop();
    } finally {
      if (dir) rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('svc says the demo service runs, and the monitor script agrees with no arguments and no environment', async () => {
    const pid = await waitFor('the demo service', svc, 30_000, 200);
    expect(pid).toBeGreaterThan(1);
    // The tag is echoed, and a command of the old protocol still answers as before.
    expect(await rig.fault('svc t42')).toBe(`ok svc ${pid} t42`);
    expect(await rig.fault('ping')).toBe('ok ping pong');

    const wrapped = await run(monitorScript, []);
    expect(wrapped).toMatchObject({ code: 0, stdout: `ok svc ${pid}\n` });
    const byEnv = await run(process.execPath, [checkScript], { VESPER_GUEST_TEST_SOCKET: rig.testSocket });
    expect(byEnv.code).toBe(0);

    const missing = await run(process.execPath, [checkScript, join(dir, 'no-such.sock')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^check-guest-service: test socket .* missing/);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('writes a domain XML the VirtualDomain agent can read, and a primitive with its parameters', async () => {
    const xml = readFileSync(configXml, 'utf8');
    // The agent finds the domain name with a line-based egrep/sed: it must be on a line of its own.
    expect(xml).toMatch(new RegExp(`^\\s*<name>${rig.name}</name>\\s*$`, 'm'));
    expect(xml).toContain(rig.testSocket);
    expect(await rig.hv.xml(rig.name)).toContain(`<kernel>${rig.image.kernel}</kernel>`);

    const primitive = virtualDomainPrimitiveXml({ id: 'vesper-vd', configXml, monitorScript });
    expect(primitive).toContain('type="VirtualDomain"');
    expect(primitive).toMatch(/name="monitor" interval="10s" timeout="30s"/);
    expect(primitive).toMatch(/name="force_stop" value="true"/);
    expect(() => virtualDomainPrimitiveXml({ id: 'x', configXml: '/tmp/a b.xml', monitorScript })).toThrow(/spaces/);
    if (!noAgent) {
      const meta = await run(AGENT, ['meta-data'], { OCF_ROOT: '/usr/lib/ocf' });
      for (const [, name] of primitive.matchAll(/<nvpair [^>]*name="([^"]+)"/g)) expect(meta.stdout).toContain(`<parameter name="${name}"`);
    }
  });

  it('segv-svc: a real SIGSEGV and the service stays down until release-svc, then comes back', async () => {
    const before = await waitFor('the demo service', svc, 30_000, 200);
    const [pid] = numbersIn(await rig.fault('segv-svc'));
    expect(pid).toBe(before);
    await waitFor('the demo service to be down', async () => (await svc()) === null, 20_000, 200);
    // Without the hold init would have restarted it after 1 s.
    expect(await staysDown(3500)).toBeGreaterThanOrEqual(2);
    // 139 = 128 + SIGSEGV: the kernel killed it, as in a genuine crash.
    expect(console_()).toContain('vesper-demo-svc exited with status 139');
    expect(console_()).toContain('vesper-demo-svc held down while /run/vesper-demo-svc.hold exists');

    const down = await run(monitorScript, []);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^check-guest-service: the guest's demo service is not running \(err svc down\)\n$/);

    expect(await rig.fault('release-svc')).toBe('ok release-svc');
    const after = await waitFor('the demo service back', svc, 10_000, 200);
    expect(after).not.toBe(pid);
    // The monitor script asks on its own connection; right after a restart its first answer
    // can still be the old one (a CI run saw exit 1 once), so it gets a few seconds too.
    const up = await waitFor(
      'the monitor script says the service runs',
      async () => (await run(monitorScript, [])).code === 0 || undefined,
      10_000,
      200,
    );
    expect(up).toBe(true);
  });

  it.skipIf(Boolean(noAgent))('the real VirtualDomain monitor fails while the service is held down', async () => {
    // The agent's own monitor action, as execd would call it, on the running domain: libvirt
    // says running, so the verdict is the monitor script's.
    const env = {
      OCF_ROOT: '/usr/lib/ocf',
      OCF_RESOURCE_INSTANCE: 'vesper-vd',
      OCF_RESKEY_config: configXml,
      OCF_RESKEY_hypervisor: 'qemu:///system',
      OCF_RESKEY_monitor_scripts: monitorScript,
      OCF_RESKEY_autoset_utilization_cpu: 'false',
      OCF_RESKEY_autoset_utilization_host_memory: 'false',
      OCF_RESKEY_autoset_utilization_hv_memory: 'false',
      HA_RSCTMP: dir,
    };
    await waitFor('the demo service', svc, 30_000, 200);
    expect((await run(AGENT, ['monitor'], env, 60_000)).code).toBe(0);
    await rig.fault('segv-svc');
    await waitFor('the demo service to be down', async () => (await svc()) === null, 20_000, 200);
    const failed = await run(AGENT, ['monitor'], env, 60_000);
    expect(failed.code).toBe(1); // OCF_ERR_GENERIC
    expect(failed.stderr).toContain('not running (err svc down)');
    await rig.fault('release-svc');
    await waitFor('the demo service back', svc, 10_000, 200);
    expect((await run(AGENT, ['monitor'], env, 60_000)).code).toBe(0);
  });

  it('oom-svc: the kernel OOM-kills the service with its group, and it stays down until release-svc', async () => {
    const before = await waitFor('the demo service', svc, 30_000, 200);
    const [pid, hog] = numbersIn(await rig.fault('oom-svc'));
    expect(pid).toBe(before);
    expect(hog).toBeGreaterThan(1);
    await waitFor('the demo service to be OOM-killed', async () => (await svc()) === null, 30_000, 200);
    const events = await rig.fault('svc-events');
    const count = (k: string): number => Number(new RegExp(`\\b${k} (\\d+)`).exec(events)?.[1] ?? 0);
    expect(count('oom_kill')).toBeGreaterThanOrEqual(2); // the hog and the service
    expect(count('oom_group_kill')).toBeGreaterThanOrEqual(1);
    // The kernel's own account, on the serial console (loglevel 4 lets pr_err through).
    await waitFor('the OOM kill in the kernel log', () => console_().includes(`Killed process ${pid} (vesper-demo-svc)`), 10_000, 200);
    expect(await staysDown(3500)).toBeGreaterThanOrEqual(2);
    expect((await run(monitorScript, [])).code).toBe(1);

    expect(await rig.fault('release-svc')).toBe('ok release-svc');
    await waitFor('the demo service back', svc, 10_000, 200);
    expect((await run(monitorScript, [])).code).toBe(0);
    await expect(rig.fault('svc-events')).rejects.toThrow(/no oom-svc group/); // the group is gone
  });

  it('after release, the old faults respawn the service after 1 s as before', async () => {
    const before = await waitFor('the demo service', svc, 30_000, 200);
    const [pid] = numbersIn(await rig.fault('segv'));
    expect(pid).toBe(before);
    await waitFor('the demo service restarted', async () => ((await svc()) ?? pid) !== pid, 15_000, 200);
  });
});
