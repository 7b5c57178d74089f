// FenceThenStart: move a VM whose instance failed to a standby hypervisor, without ever letting
// two instances run at once. In order, each step only after the one before it succeeded:
//
//   locked     the fence lease on the VM (and on the name it will run under on the standby), so
//              that of several managers that suspect the VM, one acts; the others get
//              VSP_FENCE_LOCKED naming the holder. The lease is a coordination marker with a
//              fencing token (fence-lock.ts), not the guarantee.
//   guarded    the guarantee: the standby's libvirt refuses a second QEMU on the VM's disks while
//              the primary holds them (libvirt's lock manager, checked by trying: lock-guard.ts);
//              VSP_FAILOVER_UNGUARDED otherwise, nothing fenced. Skipped only when the operator
//              said so (actions.require_lock_manager: false).
//   fenced     destroy on the primary; a domain that is already shut off is fine
//   confirmed  the primary's libvirt says 'shut off' (an injected waitStopped, e.g. libvirt's
//              lifecycle events, then one state read; or polling the state), within
//              confirmTimeoutMs: what fence_virsh does (destroy, then read the state back)
//   defined    the primary's persistent XML, renamed if asked and marked with the fencing token,
//              defined on the standby, unless the standby holds a definition marked by a newer
//              failover (VSP_FENCE_LOCKED: this manager is the stale one)
//   started    started on the standby. If libvirt's lock manager refuses because another QEMU
//              holds the disks (another manager's copy, a restart on the primary), that is
//              VSP_DISK_LOCKED: the refusal working, said as such
//
// A primary whose libvirt cannot be reached is NOT a stopped primary: the host may be alive
// behind a broken network and the VM with it, writing to the same disks. That fails with
// VSP_PRIMARY_UNREACHABLE and nothing is started: a dead host is Pacemaker's and STONITH's job.
// The lease is renewed (which also proves we still hold it) before defining and before starting,
// and released at the end whatever happened.
//
// The standby must reach the VM's disks (shared storage): vesper moves the definition, not data.
// Callers connect to the standby before calling (the runner does): fencing a VM that then
// cannot be started anywhere would be an outage of our own making.
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { describeHolder, type FenceLock, type Lease } from './fence-lock.js';
import { newerFenceOnStandby, withFenceMark } from './fence-mark.js';
import { verifyLockGuard, type LockGuardResult } from './lock-guard.js';
import { silentLog, type ActionLog } from './log.js';
import { destroyIfRunning } from './restart.js';
import { escapeXml } from '../libvirt/xml-text.js';

export type FailoverStepName = 'locked' | 'guarded' | 'fenced' | 'confirmed' | 'defined' | 'started';

export interface FailoverStep {
  step: FailoverStepName;
  /** wall-clock time (Date.now()) when the step completed */
  atMs: number;
}

export interface FailoverOptions {
  vm: string;
  primary: Hypervisor;
  standby: Hypervisor;
  /** the name on the standby (default: the same name); a new name gets a new UUID and MACs */
  standbyName?: string;
  lock: FenceLock;
  /** who we are in the lock (e.g. "host-a/1234") */
  owner: string;
  /** how long the primary may take to report 'shut off' after the destroy */
  confirmTimeoutMs: number;
  /** how often to read the primary's state while confirming (default 200 ms) */
  pollMs?: number;
  /**
   * Resolves once the domain has stopped on the primary (the daemon backs it with libvirt's
   * lifecycle events); a rejection or the timeout fails the failover. The state is read once
   * more after it resolves.
   */
  waitStopped?: (vm: string, timeoutMs: number) => Promise<void>;
  /**
   * Refuse unless the standby's libvirt refuses a second QEMU on the VM's disks (default true).
   * false only for setups without shared disks, such as tests of the ordering on one libvirtd.
   */
  requireLockManager?: boolean;
  /** lease length (default confirmTimeoutMs + 120 s: the libvirt calls after it are bounded too) */
  leaseTtlMs?: number;
  log?: ActionLog;
}

export interface FailoverResult {
  vm: string;
  standbyName: string;
  /** false: the domain was already shut off on the primary */
  destroyed: boolean;
  steps: FailoverStep[];
  /** the lease's fencing token, also written into the standby's definition */
  fence: number;
  /** how the lock manager's refusal was seen (null: not required) */
  guard: LockGuardResult | null;
}

/** A failover that stopped part way; `steps` says how far it got. */
export class FailoverError extends VesperError {
  readonly steps: FailoverStep[];
  constructor(code: string, message: string, steps: FailoverStep[], options?: { cause?: unknown }) {
    super(code, message, steps.map((s) => s.step).join(','), options);
    this.name = 'FailoverError';
    this.steps = steps;
  }
}

export async function failover(o: FailoverOptions): Promise<FailoverResult> {
  const log = o.log ?? silentLog;
  const target = o.standbyName ?? o.vm;
  const steps: FailoverStep[] = [];
  const mark = (step: FailoverStepName): void => {
    steps.push({ step, atMs: Date.now() });
    log.info({ vm: o.vm, standbyName: target, step }, `failover: ${step}`);
  };
  const fail = (code: string, message: string, cause?: unknown): FailoverError =>
    new FailoverError(code, `failover of ${o.vm}: ${message}`, steps, cause === undefined ? undefined : { cause });

  if (!o.vm) throw fail(ErrorCode.USAGE, 'no VM name (a host event cannot be failed over)');
  if (o.standbyName !== undefined) {
    const problem = domainNameProblem(o.standbyName);
    if (problem) throw fail(ErrorCode.USAGE, `standby name ${JSON.stringify(o.standbyName)} ${problem}`);
  }
  const ttl = o.leaseTtlMs ?? o.confirmTimeoutMs + 120_000;

  // 1. the locks: the VM's, and the name it will run under (so the instance being brought up
  //    cannot itself be fenced meanwhile: the seed's "block shots at yourself while you shoot").
  const keys = [...new Set([o.vm, target])].sort();
  const leases: Lease[] = [];
  try {
    for (const key of keys) {
      let r;
      try {
        r = await o.lock.tryAcquire(key, o.owner, ttl);
      } catch (err) {
        throw fail(ErrorCode.FENCE_FAILED, `cannot take the fence lock: ${(err as Error).message}`, err);
      }
      if (!r.ok) {
        throw fail(
          ErrorCode.FENCE_LOCKED,
          `fence lock on ${JSON.stringify(key)} is held by ${describeHolder(r.holder)} until ${new Date(r.expiresAt).toISOString()}; not fencing`,
        );
      }
      leases.push(r.lease);
    }
    mark('locked');
    const fence = Math.max(...leases.map((l) => l.fence));

    // 2. the guard: libvirt's lock manager, not our lease
    let guard: LockGuardResult | null = null;
    if (o.requireLockManager !== false) {
      try {
        guard = await verifyLockGuard({ vm: o.vm, primary: o.primary, standby: o.standby, log });
      } catch (err) {
        const e = VesperError.from(err, ErrorCode.ACTION_FAILED);
        if (e.code === ErrorCode.LIBVIRT_UNAVAILABLE) throw fail(ErrorCode.PRIMARY_UNREACHABLE, unreachable(e), err);
        if (e.code === ErrorCode.DOMAIN_NOT_FOUND) throw fail(ErrorCode.FENCE_FAILED, fenceProblem(e), err);
        throw fail(e.code, e.message, err);
      }
      mark('guarded');
    }
    // A standby definition marked by a newer failover: this manager is the stale one. Asked
    // before the fence (not to shoot a VM for nothing) and again before the define.
    const stale = async (): Promise<void> => {
      let newer: string;
      try {
        newer = await newerFenceOnStandby(o.standby, target, fence);
      } catch (err) {
        throw fail(ErrorCode.ACTION_FAILED, (err as Error).message, err);
      }
      if (newer)
        throw fail(
          ErrorCode.FENCE_LOCKED,
          `the standby's ${target} was defined by a newer failover (${newer}, ours ${fence}); not failing over`,
        );
    };
    await stale();

    // 3. fence
    let destroyed: boolean;
    try {
      destroyed = (await destroyIfRunning(o.primary, o.vm)).destroyed;
    } catch (err) {
      const unreached = VesperError.from(err).code === ErrorCode.LIBVIRT_UNAVAILABLE;
      throw fail(unreached ? ErrorCode.PRIMARY_UNREACHABLE : ErrorCode.FENCE_FAILED, fenceProblem(err), err);
    }
    mark('fenced');

    // 4. confirm
    await confirmShutOff(o, fail);
    mark('confirmed');

    // 5. define on the standby, unless a newer failover already did
    await renewAll(o.lock, leases, fail);
    let xml: string;
    try {
      xml = await o.primary.xml(o.vm);
    } catch (err) {
      throw fail(ErrorCode.ACTION_FAILED, `cannot read the definition from the primary: ${(err as Error).message}`, err);
    }
    await stale();
    let defined: string;
    try {
      defined = await o.standby.define(withFenceMark(standbyXml(xml, o.standbyName), { fence, owner: o.owner }));
    } catch (err) {
      throw fail(ErrorCode.ACTION_FAILED, `define ${target} on the standby: ${(err as Error).message}`, err);
    }
    mark('defined');

    // 6. start there
    await renewAll(o.lock, leases, fail);
    try {
      await o.standby.start(defined || target);
    } catch (err) {
      const e = VesperError.from(err, ErrorCode.ACTION_FAILED);
      if (e.code === ErrorCode.DISK_LOCKED)
        throw fail(
          ErrorCode.DISK_LOCKED,
          `libvirt on the standby refused to start ${target}: another QEMU holds its disks (another copy is running; the lock manager kept it to one): ${e.message}`,
          err,
        );
      throw fail(ErrorCode.ACTION_FAILED, `start ${target} on the standby: ${e.message}`, err);
    }
    mark('started');
    return { vm: o.vm, standbyName: target, destroyed, steps, fence, guard };
  } finally {
    for (const lease of leases.reverse()) {
      await o.lock
        .release(lease)
        .catch((err: Error) => log.warn({ vm: o.vm, key: lease.key, err: err.message }, 'fence lock not released'));
    }
  }
}

function unreachable(e: VesperError): string {
  return `the primary's libvirt cannot be reached (${e.message}); an unreachable host is not a stopped one, so nothing is fenced or started: a host failure is for Pacemaker and its STONITH to handle`;
}

function fenceProblem(err: unknown): string {
  const e = VesperError.from(err);
  if (e.code === ErrorCode.LIBVIRT_UNAVAILABLE) return unreachable(e);
  if (e.code === ErrorCode.DOMAIN_NOT_FOUND) return `the primary has no such domain (${e.message}); nothing to fence or move`;
  return `destroy on the primary failed: ${e.message}`;
}

async function confirmShutOff(o: FailoverOptions, fail: (code: string, message: string, cause?: unknown) => FailoverError): Promise<void> {
  const deadline = Date.now() + o.confirmTimeoutMs;
  const remaining = (): number => Math.max(0, deadline - Date.now());
  if (o.waitStopped) {
    try {
      await bounded(o.waitStopped(o.vm, remaining()), remaining(), 'waiting for the stop');
    } catch (err) {
      throw fail(ErrorCode.FENCE_FAILED, `stop not confirmed: ${(err as Error).message}`, err);
    }
  }
  const pollMs = o.pollMs ?? 200;
  let last = 'no answer yet';
  for (;;) {
    try {
      const s = await bounded(o.primary.state(o.vm), remaining(), 'reading the state');
      if (s.state === 'shut off') return;
      last = `state ${s.state}${s.reason ? ` (${s.reason})` : ''}`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (remaining() <= 0)
      throw fail(
        ErrorCode.FENCE_FAILED,
        `the primary did not confirm 'shut off' within ${o.confirmTimeoutMs} ms (last: ${last}); nothing started`,
      );
    await sleep(Math.min(pollMs, remaining()));
  }
}

async function renewAll(
  lock: FenceLock,
  leases: Lease[],
  fail: (code: string, message: string, cause?: unknown) => FailoverError,
): Promise<void> {
  for (let i = 0; i < leases.length; i++) {
    try {
      leases[i] = await lock.renew(leases[i]!);
    } catch (err) {
      throw fail(ErrorCode.FENCE_LOCKED, `lost the fence lock before starting anything: ${(err as Error).message}`, err);
    }
  }
}

/** `p`, or a rejection once `ms` have passed (the call itself is left to finish on its own). */
function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The definition to put on the standby. Live-only attributes go; with a new name, the UUID (also
 * the one in <sysinfo>) and the interfaces' MAC addresses go too, so that libvirt generates new
 * ones and the copy is a domain of its own (the original may be defined again on its host).
 * Libvirt writes <name> as the domain's first child and never inside other elements.
 */
export function standbyXml(xml: string, newName?: string): string {
  let out = xml.replace(/^(\s*<domain\b[^>]*?)\s+id=(['"])[^'"]*\2/, '$1');
  if (newName === undefined) return out;
  let renamed = false;
  out = out.replace(/<name>[^<]*<\/name>/, () => {
    renamed = true;
    return `<name>${escapeXml(newName)}</name>`;
  });
  if (!renamed) throw new VesperError(ErrorCode.ACTION_FAILED, 'the domain XML has no <name>');
  return out
    .replace(/\n?[ \t]*<uuid>[^<]*<\/uuid>/g, '')
    .replace(/\n?[ \t]*<entry name=(['"])uuid\1>[^<]*<\/entry>/g, '')
    .replace(/\n?[ \t]*<mac address=(['"])[^'"]*\1\s*\/>/g, '');
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

function domainNameProblem(name: string): string {
  if (name === '') return 'is empty';
  if (CONTROL.test(name)) return 'contains control characters';
  if (name.includes('/')) return "contains '/', which libvirt refuses in a domain name";
  return '';
}
