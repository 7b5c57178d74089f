// The main job on a real distribution: a Debian 12 guest built here from Debian's archive
// (systemd, sshd, nginx, the vesper-agent package, a service that crashes), vesperd watching it
// over the virtio-serial channel, probes attached with the `vesper` CLI, failures caused the way
// they happen on such a guest (through its sshd, as an administrator would), and what vesperd
// told its subscribers (`vesper events -f`), then `vesper analyze`.
//   tsx test/rigs/demo/distro-demo.ts [--distro debian12|debian13]
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { projectRoot } from '../../helpers/project-root.js';
import { DistroGuest } from '../distro/rig.js';
import { isDistro } from '../distro/image.js';

const log = (msg: string): void => void process.stderr.write(`vesper demo: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { distro: { type: 'string', default: 'debian12' } } });
  if (!isDistro(values.distro)) throw new Error(`--distro ${values.distro}: debian12 or debian13`);
  if (process.getuid?.() !== 0) {
    log('needs root: it installs packages, builds a Debian image and runs libvirtd and QEMU');
    process.exitCode = 77;
    return;
  }
  const root = projectRoot();
  const cli = join(root, 'dist/host/vesper.mjs');
  const dir = mkdtempSync('/tmp/vesper-demo-');
  const socket = join(dir, 'vesperd.sock');
  const vesper = (...args: string[]): string => execFileSync(process.execPath, [cli, '--socket', socket, ...args], { encoding: 'utf8' });
  const g = new DistroGuest(values.distro, {
    name: `vesper-demo-${values.distro}`,
    onProgress: (s, d) => log(`${s}${d ? `: ${d}` : ''}`),
  });
  let daemon: ChildProcess | undefined;
  let follower: ChildProcess | undefined;
  try {
    await g.prepare();
    // A demo domain left by an interrupted run goes first.
    await g.hv.destroy(g.name).catch(() => undefined);
    await g.hv.undefine(g.name).catch(() => undefined);
    await g.boot();
    log(
      `guest ${g.name} (${values.distro}, kernel ${g.image.kernelRelease}) is up under ${g.accel.toUpperCase()}: sshd on 127.0.0.1:${g.sshPort}`,
    );
    log(
      `in the guest: ${(await g.ssh('systemctl is-active nginx vesper-crashy vesper-agent | paste -sd" "')).trim()} (nginx, vesper-crashy, vesper-agent)`,
    );
    writeFileSync(
      join(dir, 'vesper.yaml'),
      `daemon:\n  socket: ${socket}\n  log_level: warn\nlibvirt:\n  domains: [${g.name}]\nstore:\n  path: ${join(dir, 'events.db')}\nactions:\n  fence_lock_dir: ${join(dir, 'fence')}\n`,
    );
    log('starting vesperd');
    daemon = spawn(process.execPath, [cli, 'daemon', '--config', join(dir, 'vesper.yaml')], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, VESPER_KEY_DIR: g.key.dir },
    });
    let linked = false;
    for (let i = 0; i < 240 && !linked; i++) {
      await sleep(500);
      try {
        linked = (JSON.parse(vesper('status', g.name, '-o', 'json')) as { link?: string }).link === 'connected';
      } catch {
        /* vesperd still starting */
      }
    }
    if (!linked) throw new Error(`vesperd did not link to the agent in ${g.name} within 120 s`);
    log('vesper attach: signal, oom, process');
    process.stdout.write(vesper('attach', g.name, 'signal', 'oom'));
    process.stdout.write(vesper('attach', g.name, 'process', '--param', 'comms=vesper-crashy,nginx,tail'));
    log('vesper events -f:');
    follower = spawn(process.execPath, [cli, '--socket', socket, 'events', '-f', '--vm', g.name], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    await sleep(2000);
    for (const [what, cmd] of [
      ['the vesper-crashy service really dereferences NULL (systemd restarts it)', 'systemctl kill -s USR1 vesper-crashy.service'],
      ['vesper-memhog.service outgrows its MemoryMax= and is OOM-killed', 'systemctl start vesper-memhog.service'],
      ['an administrator stops nginx', 'systemctl stop nginx.service'],
      [
        'nginx started again, then its master kill -9ed by an administrator',
        'systemctl start nginx.service && sleep 1 && kill -9 $(cat /run/nginx.pid)',
      ],
    ] as const) {
      log(`fault: ${what}`);
      await g.ssh(cmd).catch((e: Error) => log(`  ${e.message}`));
      await sleep(3000);
    }
    log('fault: the guest kernel panics (sysrq-c)');
    await g.sshRun('echo c > /proc/sysrq-trigger', 10_000);
    await sleep(5000);
    follower.kill();
    log('vesper list:');
    process.stdout.write(vesper('list'));
    log(`vesper analyze ${g.name} --last: what happened last, and why`);
    process.stdout.write(vesper('analyze', g.name, '--last'));
  } finally {
    follower?.kill();
    daemon?.kill('SIGTERM');
    await sleep(1000);
    await g.destroy();
    rmSync(dir, { recursive: true, force: true });
    log('vesperd stopped; guest stopped and undefined');
  }
}

await main();
