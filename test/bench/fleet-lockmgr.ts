// fleet.lockmgr: failover guarded by libvirt's lock manager, in its worst case. Two libvirtd
// hosts with lockd and a shared lockspace (test/rigs/lockd/hosts.ts), the busybox guest with its
// disk on the shared directory, and per trial one race (test/helpers/lockd-failover.ts): two
// managers that both fail the VM over, each towards the other host, with vesper's lease broken
// (each manager's lease directory its own), forced into the order where both starts come after
// both fences.
//   fleet.lockmgr.trials              races run
//   fleet.lockmgr.double_starts       races after which the VM ran on both hosts, or both managers
//                                     reported a start (target 0)
//   fleet.lockmgr.refused_by_lockd    races whose second start libvirt's lockd refused
//                                     (VSP_DISK_LOCKED with lockd's words)
//   fleet.lockmgr.failover_ms.p50/max the winner's failover, lease to start
//   fleet.lockmgr.loadavg_1m          the machine's load at the end (it is shared)
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { ErrorCode } from '../../proto/errors.js';
import { lockdGuestXml, placeVm, raceTrial } from '../helpers/lockd-failover.js';
import { LibvirtHostsRig, whyNoLibvirtHostsRig } from '../rigs/lockd/hosts.js';
import { pct, round, type Metrics } from './stats.js';

export async function lockmgrBench(m: Metrics, o: { trials: number; log: (s: string) => void }): Promise<void> {
  const why = whyNoLibvirtHostsRig();
  if (why) {
    o.log(`fleet.lockmgr benchmark skipped: ${why}`);
    return;
  }
  const work = mkdtempSync('/tmp/vesper-lockmgr-');
  const rig = new LibvirtHostsRig([
    { name: 'a', lockManager: 'lockd' },
    { name: 'b', lockManager: 'lockd' },
  ]);
  const vm = `vlkb-${process.pid % 100000}`;
  let trials = 0;
  let doubles = 0;
  let byLockd = 0;
  const ms: number[] = [];
  const other: string[] = [];
  try {
    await rig.start();
    const xml = await lockdGuestXml(rig, vm);
    const a = rig.host('a');
    const b = rig.host('b');
    for (let i = 0; i < o.trials; i++) {
      await placeVm(vm, xml, a, [b]);
      const r = await raceTrial({ vm, a, b, workDir: work, lease: 'split' });
      trials++;
      const ok = r.results.filter((x) => x.ok);
      if (r.runningOn.length > 1 || ok.length > 1) doubles++;
      const refused = r.results.find((x) => !x.ok);
      if (refused?.error?.code === ErrorCode.DISK_LOCKED && /Lockspace resource/.test(refused.error.message)) byLockd++;
      else other.push(refused ? `${refused.error?.code}: ${refused.error?.message}` : 'none refused');
      const d = ok[0]?.detail['durationMs'];
      if (typeof d === 'number') ms.push(d);
      if (r.probesLeft.length) other.push(`probes left: ${r.probesLeft.join(' ')}`);
      if ((i + 1) % 10 === 0) o.log(`fleet.lockmgr: ${i + 1}/${o.trials} races, ${doubles} double starts, ${byLockd} refused by lockd`);
    }
  } finally {
    await rig.stop();
    rmSync(work, { recursive: true, force: true });
  }
  for (const x of [...new Set(other)].slice(0, 5)) o.log(`fleet.lockmgr: not a lockd refusal: ${x}`);
  ms.sort((x, y) => x - y);
  m['fleet.lockmgr.trials'] = trials;
  m['fleet.lockmgr.double_starts'] = doubles;
  m['fleet.lockmgr.refused_by_lockd'] = byLockd;
  if (ms.length) {
    m['fleet.lockmgr.failover_ms.p50'] = round(pct(ms, 50), 0);
    m['fleet.lockmgr.failover_ms.max'] = round(ms.at(-1)!, 0);
  }
  m['fleet.lockmgr.loadavg_1m'] = round(loadavg()[0]!, 2);
}
