// The main job, end to end on the embedded default: a local libvirtd, a small guest built
// here with the agent inside, vesperd watching it over the virtio-serial channel, probes
// attached with the `vesper` CLI, real failures caused inside the guest, and what vesperd
// told its subscribers (`vesper events -f`), libvirt's own events among them.
import { VmRig } from '../vm/rig.js';
import { DemoVesperd, log, sleep } from './demo-vesperd.js';

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    log('needs root: it installs packages and runs libvirtd and QEMU');
    process.exitCode = 77;
    return;
  }
  const rig = new VmRig({ name: 'vesper-demo', testHelpers: true, onProgress: (s, d) => log(`${s}${d ? `: ${d}` : ''}`) });
  const demo = new DemoVesperd(rig.key.dir);
  const vesper = (...args: string[]): string => demo.vesper(...args);
  try {
    await rig.prepare();
    (await rig.boot()).close();
    log(`guest ${rig.name} is up under ${rig.accel.toUpperCase()}; starting vesperd`);
    demo.start();
    await demo.waitLinked(rig.name, 60);
    log('vesper attach: signal, process, oom');
    process.stdout.write(vesper('attach', rig.name, 'signal', 'oom'));
    process.stdout.write(vesper('attach', rig.name, 'process', '--param', 'comms=vesper-demo-svc,vesper-exit,tail'));
    log('vesper events -f:');
    demo.follow(rig.name);
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
    demo.stopFollowing();
    log('vesper status:');
    process.stdout.write(vesper('list'));
    log(`vesper analyze ${rig.name} --last: what happened last, and why`);
    process.stdout.write(vesper('analyze', rig.name, '--last'));
  } finally {
    await demo.stop();
    await rig.stop();
    log('vesperd stopped; guest stopped and undefined');
  }
}

await main();
