// Failover guarded by libvirt's lock manager, for real: libvirtd "hosts" in namespaces of their
// own on this machine (test/rigs/lockd/hosts.ts) sharing one image directory and one lockd
// lockspace, the small busybox guest (1 vCPU, TCG) with its disk in the shared directory, the
// managers as ActionRunners (what vesperd runs) and the `vesper failover` CLI as its own process.
//
//   a, b   lock_manager = "lockd", file_lockspace_dir on the shared directory
//   c      libvirt's default lock manager (nop)
//   d      lockd, but its lockspace on a directory of its own (not shared storage)
//
// What must hold: two managers that both fail the same VM over with vesper's lease broken never
// leave two running copies, and it is libvirt's lockd that refuses the second start, reported as
// VSP_DISK_LOCKED; a standby without a guard is refused before anything is fenced
// (VSP_FAILOVER_UNGUARDED); an unreachable primary is not failed over (VSP_PRIMARY_UNREACHABLE).
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCode } from '../../proto/errors.js';
import { lockdGuestXml, placeVm, raceTrial, type LeaseBreak, type RaceOutcome } from '../helpers/lockd-failover.js';
import { VESPER } from '../helpers/vesperd-process.js';
import { LibvirtHostsRig, whyNoLibvirtHostsRig } from '../rigs/lockd/hosts.js';

const why = whyNoLibvirtHostsRig() || (existsSync(VESPER) ? '' : `the CLI is not built (${VESPER}): npm run build`);
if (why) console.warn(`SKIP failover-lockd tests: ${why}`);

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

function vesper(args: string[], timeoutMs = 120_000): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [VESPER, ...args], { timeout: timeoutMs, cwd: '/' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe.skipIf(Boolean(why))("failover guarded by libvirt's lock manager", () => {
  let rig: LibvirtHostsRig;
  let work: string;
  let xml: string;
  const vm = `vlk-${process.pid % 100000}`;

  beforeAll(async () => {
    work = mkdtempSync('/tmp/vesper-lockd-');
    // the CLI's config: the defaults (require_lock_manager: true), a lease directory of the test's
    writeFileSync(join(work, 'vesper.yaml'), `actions:\n  fence_lock_dir: ${join(work, 'cli-lease')}\n`);
    rig = new LibvirtHostsRig([
      { name: 'a', lockManager: 'lockd' },
      { name: 'b', lockManager: 'lockd' },
      { name: 'c', lockManager: 'nop' },
      { name: 'd', lockManager: 'lockd', lockspace: 'own' },
    ]);
    await rig.start();
    xml = await lockdGuestXml(rig, vm);
  }, 300_000);

  afterAll(async () => {
    await rig?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  }, 120_000);

  /** Two managers race to fail the VM over from a to b: one copy runs afterwards, no guard probe left. */
  const race = async (lease: LeaseBreak, name: string): Promise<{ out: RaceOutcome; detail: string }> => {
    const a = rig.host('a');
    const b = rig.host('b');
    await placeVm(vm, xml, a, [b]);
    const out = await raceTrial({ vm, a, b, workDir: join(work, name), lease });
    const detail = JSON.stringify(out.results);
    expect(out.runningOn, detail).toHaveLength(1);
    expect(out.probesLeft).toEqual([]);
    return { out, detail };
  };

  const cli = (from: string, to: string, more: string[] = []): Promise<CliRun> =>
    vesper([
      'failover',
      vm,
      '--primary-uri',
      rig.host(from).uri,
      '--standby-uri',
      rig.host(to).uri,
      '--confirm-timeout',
      '30s',
      '-c',
      join(work, 'vesper.yaml'),
      ...more,
    ]);

  it('the rig: lockd itself refuses a second QEMU on the disk from the other host', async () => {
    const a = rig.host('a');
    const b = rig.host('b');
    await placeVm(vm, xml, a, [b]);
    const second = b.virsh(['start', vm]);
    expect(second.status).not.toBe(0);
    expect(second.stderr).toMatch(/resource busy: Lockspace resource '[^']+' is locked/);
    expect(b.running()).not.toContain(vm);
    // the control: with libvirt's default (nop) lock manager a second copy starts, so the
    // refusal above is lockd's and the tests below can fail
    const c = rig.host('c');
    await placeVm(vm, xml, a, [c]);
    const third = c.virsh(['start', vm]);
    try {
      expect(third.status, third.stderr).toBe(0);
      expect(a.running()).toContain(vm);
      expect(c.running()).toContain(vm);
    } finally {
      c.virsh(['destroy', vm]);
    }
  }, 120_000);

  it('two managers failing the VM over at once, each lease directory its own: one copy, the second start refused by lockd as VSP_DISK_LOCKED', async () => {
    const { out, detail } = await race('split', 'race-split');
    const ok = out.results.filter((r) => r.ok);
    const refused = out.results.filter((r) => !r.ok);
    expect(ok, detail).toHaveLength(1);
    expect(refused, detail).toHaveLength(1);
    // both got as far as the start: the lease stopped neither, libvirt stopped one
    expect(refused[0]!.error!.code).toBe(ErrorCode.DISK_LOCKED);
    expect(refused[0]!.error!.message).toMatch(/refused to start .*another QEMU holds its disks/);
    expect(refused[0]!.error!.message).toMatch(/Lockspace resource '[^']+' is locked/);
    const steps = (refused[0]!.detail['steps'] as Array<{ step: string }>).map((s) => s.step);
    expect(steps).toEqual(['locked', 'guarded', 'fenced', 'confirmed', 'defined']);
    // what vesperd would store as the action event, and what it logs
    const loser = out.results.indexOf(refused[0]!);
    expect(out.logs[loser]!.some((l) => l.startsWith('warn action failed') && l.includes(ErrorCode.DISK_LOCKED))).toBe(true);
    // the winner's copy is where its result says
    const won = ok[0]!.detail as { standbyUri: string; fence: number };
    expect(won.standbyUri).toBe(rig.host(out.runningOn[0]!).uri);
    expect(won.fence).toBe(1);
  }, 180_000);

  it("the lease file removed in the middle: the lease's owner finds it gone before starting, the other moves the VM; one copy", async () => {
    const { out, detail } = await race('removed', 'race-removed');
    expect(
      out.results.filter((r) => r.ok),
      detail,
    ).toHaveLength(1);
    const refused = out.results.find((r) => !r.ok)!;
    expect([ErrorCode.FENCE_LOCKED, ErrorCode.DISK_LOCKED]).toContain(refused.error!.code);
  }, 180_000);

  it('a standby without lockd, or with a lockspace of its own: VSP_FAILOVER_UNGUARDED (exit 78), nothing fenced', async () => {
    const a = rig.host('a');
    for (const standby of ['c', 'd']) {
      await placeVm(vm, xml, a, [rig.host(standby)]);
      const r = await cli('a', standby);
      expect(r.code, `${standby}: ${r.stderr}`).toBe(78);
      expect(r.stderr).toContain(ErrorCode.FAILOVER_UNGUARDED);
      expect(r.stderr).toContain('lock_manager = "lockd"');
      // On one machine QEMU's own image lock still refuses the probe (libvirt's lock manager did
      // not); across hosts on storage without working file locks the probe would simply start.
      expect(r.stderr).toMatch(/only QEMU's own image locking refused|started a second QEMU on .* while the primary's copy held them/);
      expect(a.running()).toContain(vm); // not fenced
      expect(rig.host(standby).running()).toEqual([]); // the probe is gone
    }
  }, 180_000);

  it('the CLI moves the VM when guarded (exit 0), and refuses as VSP_DISK_LOCKED (exit 75) when a copy runs elsewhere', async () => {
    const a = rig.host('a');
    const b = rig.host('b');
    await placeVm(vm, xml, a, [b]);
    const moved = await cli('a', 'b', ['-o', 'json']);
    expect(moved.code, moved.stderr).toBe(0);
    const r = JSON.parse(moved.stdout) as { steps: Array<{ step: string }>; guard: { holder: string; refusal: string } };
    expect(r.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced', 'confirmed', 'defined', 'started']);
    expect(r.guard.refusal).toMatch(/Lockspace resource/);
    expect(b.running()).toContain(vm);
    expect(a.running()).not.toContain(vm);
    // a stale view: "fail it over from a to b" again, while it runs on b. a's libvirt says shut
    // off, but lockd says its disk is held: nothing is touched.
    const stale = await cli('a', 'b');
    expect(stale.code, stale.stderr).toBe(75);
    expect(stale.stderr).toContain(ErrorCode.DISK_LOCKED);
    expect(stale.stderr).toMatch(/another QEMU holds its disks/);
    expect(b.running()).toContain(vm);
    b.virsh(['destroy', vm]);
  }, 180_000);

  it("an unreachable primary libvirt: no failover on unreachability alone, VSP_PRIMARY_UNREACHABLE (exit 69); the VM's QEMU still runs", async () => {
    const a = rig.host('a');
    const b = rig.host('b');
    await placeVm(vm, xml, a, [b]);
    const pid = Number(readFileSync(join(a.dir, 'run', 'qemu', `${vm}.pid`), 'utf8').trim());
    await a.stopLibvirtd(); // QEMU goes on, as on a host whose libvirt (or network) failed
    const r = await cli('a', 'b');
    expect(r.code, r.stderr).toBe(69);
    expect(r.stderr).toContain(ErrorCode.PRIMARY_UNREACHABLE);
    expect(r.stderr).toMatch(/Pacemaker/);
    expect(b.running()).toEqual([]);
    expect(existsSync(`/proc/${pid}`)).toBe(true);
  }, 120_000);
});
