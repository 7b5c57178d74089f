// The main job on a real distribution: a Debian 12 guest built here from Debian's archive
// (systemd, sshd, nginx, the vesper-agent package, a service that crashes), vesperd watching it
// over the virtio-serial channel, probes attached with the `vesper` CLI, failures caused the way
// they happen on such a guest (through its sshd, as an administrator would), and what vesperd
// told its subscribers (`vesper events -f`), then `vesper analyze`.
//   tsx test/rigs/demo/distro-demo.ts [--distro debian12|debian13]
import { parseArgs } from 'node:util';
import { DistroGuest } from '../distro/rig.js';
import { isDistro } from '../distro/image.js';
import { DemoVesperd, log, sleep } from './demo-vesperd.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { distro: { type: 'string', default: 'debian12' } } });
  if (!isDistro(values.distro)) throw new Error(`--distro ${values.distro}: debian12 or debian13`);
  if (process.getuid?.() !== 0) {
    log('needs root: it installs packages, builds a Debian image and runs libvirtd and QEMU');
    process.exitCode = 77;
    return;
  }
  const g = new DistroGuest(values.distro, {
    name: `vesper-demo-${values.distro}`,
    onProgress: (s, d) => log(`${s}${d ? `: ${d}` : ''}`),
  });
  const demo = new DemoVesperd(g.key.dir);
  const vesper = (...args: string[]): string => demo.vesper(...args);
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
    log('starting vesperd');
    demo.start([g.name]);
    await demo.waitLinked(g.name, 120);
    log('vesper attach: signal, oom, process');
    process.stdout.write(vesper('attach', g.name, 'signal', 'oom'));
    process.stdout.write(vesper('attach', g.name, 'process', '--param', 'comms=vesper-crashy,nginx,tail'));
    log('vesper events -f:');
    demo.follow(g.name);
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
    demo.stopFollowing();
    log('vesper list:');
    process.stdout.write(vesper('list'));
    log(`vesper analyze ${g.name} --last: what happened last, and why`);
    process.stdout.write(vesper('analyze', g.name, '--last'));
  } finally {
    await demo.stop();
    await g.destroy();
    log('vesperd stopped; guest stopped and undefined');
  }
}

await main();
