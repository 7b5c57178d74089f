// The vesper-agent Debian package in a real Debian guest (test/rigs/distro: Debian's archive,
// systemd, sshd, the package from `npm run package`), under the real libvirtd, with vesperd and
// the CLI as the separate processes users run:
//  - booted without the channel, the agent is installed but not running;
//  - `vesper channel add VM --live` hot-plugs the port: udev and systemd start the agent,
//    vesperd links, and a real crash of a systemd service (a NULL store, Restart=on-failure)
//    arrives at the host as a SIGSEGV record;
//  - `systemctl reboot` in the guest: the agent comes back by itself and vesperd pushes the
//    probes again (a crash after the reboot arrives);
//  - `vesper channel remove VM --live` stops the agent;
//  - `vesper agent install` over SSH (after the package is purged) takes the systemd branch,
//    then status, an upgrade (a changed bundle is replaced and the agent restarted), uninstall.
// VESPER_TEST_DISTROS picks the images (default: debian12; debian12,debian13 for both); one guest
// per image. Debian 13's agent package is installed and linked in distro-faults-debian13 too, so
// the suite boots that guest once, not twice (the suite's time on a fresh machine).
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstallReport } from '../../host/ssh/install.js';
import type { StatusReport } from '../../host/ssh/status.js';
import type { UninstallReport } from '../../host/ssh/uninstall.js';
import { bootDistro, type DistroGuest } from '../rigs/distro/rig.js';
import { isDistro, type Distro } from '../rigs/distro/image.js';
import { VESPER, VesperdProcess, writeVesperdConfig, type Run, type EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU, mmdebstrap)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP distro agent tests: ${why}`);
const distros = (process.env['VESPER_TEST_DISTROS'] ?? 'debian12').split(',').filter(Boolean);
for (const d of distros) if (!isDistro(d)) throw new Error(`VESPER_TEST_DISTROS: unknown image ${d}`);

interface SignalPayload {
  signal?: { sig?: number; target?: { pid?: number; comm?: string } };
}

describe.skipIf(Boolean(why)).each(distros as Distro[])('the vesper-agent package in a real %s guest', (distro) => {
  let g: DistroGuest;
  let dir: string;
  let d: VesperdProcess;

  const vesper = (args: string[], timeoutMs = 120_000): Promise<Run> =>
    new Promise((resolve) => {
      execFile(
        process.execPath,
        [VESPER, ...args],
        { timeout: timeoutMs, cwd: '/', env: { ...process.env, VESPER_KEY_DIR: d.keyDir } },
        (err, stdout, stderr) => {
          const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
          resolve({ code, stdout: String(stdout), stderr: String(stderr) });
        },
      );
    });
  const ok = async (args: string[]): Promise<string> => {
    const r = await vesper(args);
    if (r.code !== 0) throw new Error(`vesper ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return r.stdout;
  };
  const agentState = async (): Promise<string> => (await g.sshRun('systemctl is-active vesper-agent.service', 30_000)).stdout.trim();
  const crashyPid = async (): Promise<number> => Number((await g.ssh('systemctl show -P MainPID vesper-crashy.service')).trim());
  const probesLoaded = (): Promise<boolean> => d.probesLoaded(g.name);
  /** A real crash of the service (its SIGUSR1 handler stores to address 0) and its record at the host. */
  const crashArrives = async (): Promise<EventLine<SignalPayload>> => {
    const pid = await waitFor('vesper-crashy running', async () => (await crashyPid()) || undefined, 30_000, 500);
    await g.ssh('systemctl kill -s USR1 vesper-crashy.service');
    return waitFor(
      `SIGSEGV of ${pid} stored`,
      async () => {
        const r = await d.cli(['events', '--vm', g.name, '--plugin', 'signal', '--limit', '50', '-o', 'json']);
        return r.stdout
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as EventLine<SignalPayload>)
          .find((e) => e.payload?.signal?.sig === 11 && e.payload.signal.target?.pid === pid);
      },
      30_000,
      500,
    );
  };

  beforeAll(async () => {
    g = await bootDistro(distro, {
      agentChannel: false,
      waitFor: 'ssh',
      onProgress: (s, x) => console.warn(`distro rig (${distro}): ${s}${x ? `: ${x}` : ''}`),
    });
    dir = mkdtempSync('/tmp/vesper-distro-agent-');
    chmodSync(dir, 0o755);
    const socket = join(dir, 'run', 'vesperd.sock');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), { socket, store: join(dir, 'events.db'), domains: [g.name] });
    d = new VesperdProcess(config, socket);
    await d.start();
  }, 1_800_000);

  afterAll(async () => {
    await d?.killAll();
    await g?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('the package is installed and its agent waits for the port', async () => {
    expect(await g.ssh("dpkg-query -W -f '${Status} ${Version}' vesper-agent")).toMatch(/^install ok installed \d/);
    expect(await g.ssh('uname -r')).toContain(g.image.kernelRelease);
    expect(await agentState()).toBe('inactive');
  });

  it(
    '`vesper channel add --live` starts it (udev + systemd); vesperd links; a real service crash arrives',
    { timeout: 300_000 },
    async () => {
      const added = JSON.parse(await ok(['channel', 'add', g.name, '--live', '--connect', 'qemu:///system', '-o', 'json'])) as {
        results: Array<{ scope: string; outcome: string }>;
      };
      expect(added.results.map((r) => [r.scope, r.outcome])).toEqual([['live', 'added']]);
      await waitFor('vesper-agent.service active', async () => (await agentState()) === 'active', 60_000, 1000);
      // started by the device: the unit is not enabled, the port pulled it in
      expect((await g.sshRun('systemctl is-enabled vesper-agent.service')).stdout.trim()).not.toBe('enabled');
      await d.waitLinked(g.name, 90_000, 1000);
      await d.ok(['attach', g.name, 'signal', 'process', 'oom']);
      await waitFor('probes loaded', probesLoaded, 90_000, 1000);
      const e = await crashArrives();
      expect(e.payload?.signal?.target?.comm).toBe('vesper-crashy');
    },
  );

  it('after `systemctl reboot` the agent comes back by itself and vesperd pushes the probes again', { timeout: 400_000 }, async () => {
    const bootBefore = (await g.ssh('cat /proc/sys/kernel/random/boot_id')).trim();
    await g.sshRun('systemctl reboot', 15_000); // the connection may drop before it answers
    await sleep(5000);
    await g.waitSsh(240_000);
    expect((await g.ssh('cat /proc/sys/kernel/random/boot_id')).trim()).not.toBe(bootBefore);
    await waitFor('vesper-agent.service active again', async () => (await agentState()) === 'active', 90_000, 1000);
    await waitFor('probes loaded again', probesLoaded, 120_000, 1000);
    const e = await crashArrives();
    expect(e.payload?.signal?.target?.comm).toBe('vesper-crashy');
  });

  it('`vesper channel remove --live` stops it', { timeout: 180_000 }, async () => {
    const removed = JSON.parse(await ok(['channel', 'remove', g.name, '--live', '--connect', 'qemu:///system', '-o', 'json'])) as {
      results: Array<{ scope: string; outcome: string }>;
    };
    expect(removed.results.map((r) => [r.scope, r.outcome])).toEqual([['live', 'removed']]);
    await waitFor('vesper-agent.service stopped', async () => (await agentState()) !== 'active', 60_000, 1000);
    expect(await agentState()).toMatch(/inactive|failed/);
    expect((await g.sshRun('pgrep -f /usr/lib/vesper-agent/vesper-agent.mjs')).code).toBe(1);
  });

  it('`vesper agent install` over SSH takes the systemd branch; status, upgrade, uninstall', { timeout: 400_000 }, async () => {
    await g.ssh('dpkg --purge vesper-agent', 120_000);
    expect((await g.sshRun('test -e /usr/lib/vesper-agent')).code).not.toBe(0);
    const knownHosts = join(dir, 'known_hosts');
    writeFileSync(knownHosts, '');
    const target = ['--ssh', `root@127.0.0.1:${g.sshPort}`, '--key', g.image.sshKey, '--known-hosts', knownHosts];
    const agent = async <T>(verb: string, more: string[] = []): Promise<T> =>
      JSON.parse(await ok(['agent', verb, ...target, ...more, '-o', 'json'])) as T;

    const first = await agent<InstallReport>('install', ['--accept-host-key']);
    expect(first).toMatchObject({ systemd: true, startedBy: 'systemd', unit: 'vesper-agent-ssh.service', bootHint: null });
    expect(first.agent.kernel).toContain(g.image.kernelRelease);
    expect((await g.ssh('systemctl is-active vesper-agent-ssh.service')).trim()).toBe('active');
    expect((await g.ssh('systemctl is-enabled vesper-agent-ssh.service')).trim()).toBe('enabled');

    const st = await agent<StatusReport>('status');
    expect(st).toMatchObject({ installed: true, systemd: true, answering: true, bundleIntact: true });
    expect(st.unit).toMatchObject({ name: 'vesper-agent-ssh.service', active: 'active', enabled: 'enabled' });

    // Upgrade: the bundle on the target is not the one being installed (an older build stands
    // for it here): install replaces it, only it, and restarts the agent onto it.
    await g.ssh(`printf '\\n// an older build\\n' >> ${first.prefix}/vesper-agent.mjs`);
    expect((await agent<StatusReport>('status')).bundleIntact).toBe(false);
    const upgraded = await agent<InstallReport>('install');
    expect(upgraded.restarted).toBe(true);
    expect(upgraded.agent.pid).not.toBe(first.agent.pid);
    expect(upgraded.unchanged.length).toBeGreaterThan(0);
    expect((await agent<StatusReport>('status')).bundleIntact).toBe(true);

    const gone = await agent<UninstallReport>('uninstall');
    expect(gone).toMatchObject({ removed: true, unitRemoved: true, prefixRemoved: true });
    expect((await g.sshRun('systemctl cat vesper-agent-ssh.service')).code).not.toBe(0);
    expect((await g.sshRun(`test -e ${first.prefix}`)).code).not.toBe(0);
    const after = await vesper(['agent', 'status', ...target, '-o', 'json']);
    expect(after.code).toBe(3);
  });
});
