// Failover against libvirt's lock manager, for the acceptance test and the fleet.lockmgr bench:
// a guest (the small busybox image, 1 vCPU, TCG) whose disk lies in the rig's shared image
// directory, and one "race": two managers that both decide to fail the same VM over, each
// believing it runs on the other host, with vesper's fence lease broken.
//
// The race is forced into its worst order, the one where only libvirt can still keep one copy:
// manager 1 (a → b) fences the copy on a, confirms it stopped and waits; then manager 2 (b → a)
// takes its lease, checks the guard, "fences" b (nothing runs there), confirms and waits; then
// both define and start at once, one on b and one on a. (Left to itself, the first start would
// usually make the other manager's confirmation fail, its primary running again: vesper's own
// check, not libvirt's.) The wait is in the lease's first renewal, which failover makes right
// after the confirmation. The lease is broken in one of two ways:
//   split    each manager has a lease directory of its own (a shared directory that is not, as
//            after a lost NFS mount): both hold "the" lease all along
//   removed  one shared directory, and manager 1's lease file removed while it waits: manager 2
//            takes the lease; manager 1's renewal before its start then finds it gone
// Each manager is an ActionRunner (what vesperd runs), with its own libvirt connections; its
// results are what vesperd stores as `action` events, its log what vesperd logs.
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ActionRunner, type ActionResult } from '../../host/actions/runner.js';
import { FenceLock, fileKey, type Lease } from '../../host/actions/fence-lock.js';
import type { ActionLog } from '../../host/actions/log.js';
import { ActionRateLimiter } from '../../host/actions/rate-limit.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { UnraidHypervisor } from '../../host/libvirt/unraid.js';
import { buildGuestImage, GUEST_KERNEL_CMDLINE } from '../rigs/image/build.js';
import type { LibvirtHost, LibvirtHostsRig } from '../rigs/lockd/hosts.js';
import { guestDomainXml } from '../rigs/vm/domain.js';
import { crashedEvent } from './action-event.js';
import { projectRoot } from './project-root.js';
import { waitFor } from './wait.js';

/**
 * The guest's domain XML: the busybox image, its disk in the shared directory, a UUID of its own
 * (the same on every host, so that it can be defined again over an earlier definition), and the
 * rig's emulator (QEMU's own image locking off: what refuses is libvirt's lock manager).
 */
export async function lockdGuestXml(rig: LibvirtHostsRig, name: string): Promise<string> {
  const key = loadOrCreateHostKey(join(projectRoot(), '.cache', 'keys'));
  const image = await buildGuestImage({ hostPubKeyPem: key.publicPem, testHelpers: false });
  const xml = guestDomainXml({
    name,
    accel: 'tcg',
    kernel: image.kernel,
    initrd: image.initrd,
    cmdline: GUEST_KERNEL_CMDLINE,
    memoryMiB: 384,
    vcpus: 1,
    consoleLog: join(rig.root, 'shared', `${name}.console.log`),
    channels: {},
    disks: [rig.disk(name)],
  });
  return xml
    .replace(/<\/name>/, `</name>\n  <uuid>${randomUUID()}</uuid>`)
    .replace(/<emulator>[^<]*<\/emulator>/, `<emulator>${rig.emulator}</emulator>`);
}

/** The VM defined (afresh: no fencing mark) on every host given, running on the first only. */
export async function placeVm(name: string, xml: string, runOn: LibvirtHost, alsoDefinedOn: LibvirtHost[]): Promise<void> {
  for (const h of [runOn, ...alsoDefinedOn]) {
    h.virsh(['destroy', name]);
    const def = defineFrom(h, xml);
    if (def.status !== 0) throw new Error(`define ${name} on ${h.spec.name}: ${def.stderr}`);
  }
  const r = runOn.virsh(['start', name]);
  if (r.status !== 0) throw new Error(`start ${name} on ${runOn.spec.name}: ${r.stderr}`);
  await waitFor(`${name} running on ${runOn.spec.name}`, () => runOn.running().includes(name), 30_000, 100);
}

function defineFrom(h: LibvirtHost, xml: string): { status: number | null; stderr: string } {
  const file = join(h.rig.root, `define-${h.spec.name}.xml`);
  writeFileSync(file, xml);
  return h.virsh(['define', file]);
}

export interface Manager {
  label: string;
  runner: ActionRunner;
  results: ActionResult[];
  logs: string[];
  close(): Promise<void>;
}

/** The real lease, which waits in its first renewal (right after failover's confirmation). */
class GatedLock extends FenceLock {
  private waited = false;
  constructor(
    dir: string,
    private readonly atFirstRenew: () => Promise<void>,
  ) {
    super(dir);
  }
  override async renew(lease: Lease, ttlMs?: number): Promise<Lease> {
    const next = await super.renew(lease, ttlMs);
    if (!this.waited) {
      this.waited = true;
      await this.atFirstRenew();
    }
    return next;
  }
}

/** A manager: an ActionRunner whose primary is `primary` and whose standby URI is `standby`'s. */
export async function manager(label: string, primary: LibvirtHost, standby: LibvirtHost, lock: FenceLock): Promise<Manager> {
  const p = await UnraidHypervisor.connect(primary.uri);
  const s = await UnraidHypervisor.connect(standby.uri);
  const results: ActionResult[] = [];
  const logs: string[] = [];
  const rec = (level: string) => (o: object, msg?: string) => void logs.push(`${level} ${msg ?? ''} ${JSON.stringify(o)}`);
  const log: ActionLog = { debug: () => undefined, info: rec('info'), warn: rec('warn'), error: rec('error') };
  const runner = new ActionRunner({
    hypervisorFor: async (uri) => (uri === undefined ? p : s),
    standbyUri: standby.uri,
    lock,
    limiter: new ActionRateLimiter({ max: 1_000_000, windowMs: 1000 }),
    execTimeoutMs: 10_000,
    onResult: (_ev, r) => void results.push(r),
    log,
    owner: label,
    confirmTimeoutMs: 30_000,
    actionTimeoutMs: 120_000,
  });
  return {
    label,
    runner,
    results,
    logs,
    close: async () => {
      await p.close();
      await s.close();
    },
  };
}

export type LeaseBreak = 'split' | 'removed';

export interface RaceOutcome {
  /** hosts where the VM's QEMU runs afterwards (by libvirt) */
  runningOn: string[];
  /** each manager's action result, manager 1 first */
  results: ActionResult[];
  logs: string[][];
  /** guard probes still there (must be none) */
  probesLeft: string[];
}

/** One race on a VM running on `a` (and defined on `b`): see the header. */
export async function raceTrial(o: {
  vm: string;
  a: LibvirtHost;
  b: LibvirtHost;
  workDir: string;
  lease: LeaseBreak;
}): Promise<RaceOutcome> {
  const dirs =
    o.lease === 'split' ? [join(o.workDir, 'lease-1'), join(o.workDir, 'lease-2')] : [join(o.workDir, 'lease'), join(o.workDir, 'lease')];
  for (const d of dirs) {
    rmSync(d, { recursive: true, force: true });
    mkdirSync(d, { recursive: true });
  }
  let m1Waiting!: () => void;
  const m1AtGate = new Promise<void>((r) => (m1Waiting = r));
  let openGate!: () => void;
  const gate = new Promise<void>((r) => (openGate = r));
  const m1 = await manager(
    'manager-1',
    o.a,
    o.b,
    new GatedLock(dirs[0]!, async () => {
      m1Waiting();
      await gate;
    }),
  );
  const m2 = await manager('manager-2', o.b, o.a, new GatedLock(dirs[1]!, async () => openGate()));
  try {
    m1.runner.run(crashedEvent(o.vm), 'failover', []);
    const m1Done = m1.runner.idle();
    // manager 1 has fenced a's copy and confirmed it stopped (or failed before: no race to run)
    await Promise.race([m1AtGate, m1Done]);
    if (o.lease === 'removed') rmSync(join(dirs[0]!, `${fileKey(o.vm)}.lock`), { force: true });
    m2.runner.run(crashedEvent(o.vm), 'failover', []);
    const m2Done = m2.runner.idle();
    // manager 2 failing before its gate must not leave manager 1 waiting for the confirm timeout
    void m2Done.then(() => openGate());
    await Promise.all([m1Done, m2Done]);
  } finally {
    openGate();
    await m1.close();
    await m2.close();
  }
  const runningOn = [o.a, o.b].filter((h) => h.running().includes(o.vm)).map((h) => h.spec.name);
  const probesLeft = [o.a, o.b].flatMap((h) =>
    h
      .running()
      .filter((n) => n.startsWith('vesper-guard-'))
      .map((n) => `${h.spec.name}/${n}`),
  );
  return { runningOn, results: [m1.results[0]!, m2.results[0]!], logs: [m1.logs, m2.logs], probesLeft };
}
