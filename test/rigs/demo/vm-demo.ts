// The main job, end to end on the embedded default: a local libvirtd, a small guest built
// here with the agent inside, vesperd watching it over the virtio-serial channel, probes
// attached with the `vesper` CLI, real failures caused inside the guest, and what vesperd
// told its subscribers (`vesper events -f`), libvirt's own events among them.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../helpers/project-root.js';
import { VmRig } from '../vm/rig.js';

const log = (msg: string): void => void process.stderr.write(`vesper demo: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    log('needs root: it installs packages and runs libvirtd and QEMU');
    process.exitCode = 77;
    return;
  }
  const root = projectRoot();
  const cli = join(root, 'dist/host/vesper.mjs');
  const dir = mkdtempSync('/tmp/vesper-demo-');
  const socket = join(dir, 'vesperd.sock');
  const vesper = (...args: string[]): string => execFileSync(process.execPath, [cli, '--socket', socket, ...args], { encoding: 'utf8' });
  const rig = new VmRig({ name: 'vesper-demo', testHelpers: true, onProgress: (s, d) => log(`${s}${d ? `: ${d}` : ''}`) });
  let daemon: ChildProcess | undefined;
  let follower: ChildProcess | undefined;
  try {
    await rig.prepare();
    (await rig.boot()).close();
    log(`guest ${rig.name} is up under ${rig.accel.toUpperCase()}; starting vesperd`);
    writeFileSync(
      join(dir, 'vesper.yaml'),
      `daemon:\n  socket: ${socket}\n  log_level: warn\nstore:\n  path: ${join(dir, 'events.db')}\nactions:\n  fence_lock_dir: ${join(dir, 'fence')}\n`,
    );
    daemon = spawn(process.execPath, [cli, 'daemon', '--config', join(dir, 'vesper.yaml')], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, VESPER_KEY_DIR: rig.key.dir },
    });
    for (let i = 0; i < 120; i++) {
      await sleep(500);
      try {
        if ((JSON.parse(vesper('status', rig.name, '-o', 'json')) as { link?: string }).link === 'connected') break;
      } catch {
        /* vesperd still starting */
      }
    }
    log('vesper attach: signal, process, oom');
    process.stdout.write(vesper('attach', rig.name, 'signal', 'oom'));
    process.stdout.write(vesper('attach', rig.name, 'process', '--param', 'comms=vesper-demo-svc,vesper-exit,tail'));
    log('vesper events -f:');
    follower = spawn(process.execPath, [cli, '--socket', socket, 'events', '-f', '--vm', rig.name], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    await sleep(1000);
    for (const [what, cmd] of [
      ['the demo service really segfaults', 'segv'],
      ['an administrator SIGTERMs it', 'term'],
      ['a program exits with status 3', 'exit 3'],
      ['a memory hog meets the OOM killer in a 32 MiB cgroup', 'oom'],
      ['the guest kernel panics', 'panic'],
    ] as const) {
      log(`fault: ${what}`);
      await rig.fault(cmd).catch((e: Error) => log(`  ${e.message}`));
      await sleep(cmd === 'panic' ? 4000 : 2000);
    }
    follower.kill();
    log('vesper status:');
    process.stdout.write(vesper('list'));
    log(`vesper analyze ${rig.name} --last: what happened last, and why`);
    process.stdout.write(vesper('analyze', rig.name, '--last'));
  } finally {
    follower?.kill();
    daemon?.kill('SIGTERM');
    await sleep(1000);
    await rig.stop();
    rmSync(dir, { recursive: true, force: true });
    log('vesperd stopped; guest stopped and undefined');
  }
}

await main();
