// LockGuard: before a failover fences anything, ask the two libvirts themselves whether the
// standby would refuse a second QEMU on the VM's disks. That refusal — libvirt's lock manager
// (lockd with a lockspace both hosts share, or sanlock) — is what makes two running copies
// impossible whatever any manager believes; vesper's fence lease only keeps managers from
// getting in each other's way (docs/failures.md#failover).
//
// libvirt has no call that says which lock manager a daemon uses, and a lockspace directory that
// is not really shared looks fine from either side alone, so the guard is checked the only way
// that sees both: by trying.
//
//   1. a holder of the disks on the primary: the VM itself when its QEMU is there (running,
//      crashed and kept, in shutdown), else a probe — a transient domain with the VM's writable
//      disks, started paused (QEMU opens the disks, runs no guest code) on the primary
//   2. the same disks in a paused probe on the standby: its libvirt must refuse with the lock
//      manager's words ("Lockspace resource … is locked", "Failed to acquire lock")
//   3. the probes are destroyed, whatever happened
//
// A probe that starts on the standby means no lock manager there, or a lockspace the primary's
// libvirt does not use: VSP_FAILOVER_UNGUARDED, nothing fenced. A refusal by QEMU's own image
// locking is not enough (it is not libvirt's, and does not reach across hosts on all shared
// storage). A probe refused on the primary while the VM is shut off there means another QEMU —
// a copy elsewhere — holds the disks: VSP_DISK_LOCKED, nothing fenced.
//
// Errors carry the reason only; the caller says whose failover it was.
//
// Limits: libvirt releases a paused domain's locks (and takes them again on resume) but QEMU keeps
// its image open, so a VM paused on the primary cannot be checked (refused as unguarded, saying
// why). Disks libvirt's lock manager does not lock (read-only, shareable, network disks) do not
// count; a VM with none of its own is refused too.
import { randomBytes } from 'node:crypto';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { isLockManagerRefusal } from '../libvirt/lock-refusal.js';
import { silentLog, type ActionLog } from './log.js';

export interface LockGuardOptions {
  vm: string;
  primary: Hypervisor;
  standby: Hypervisor;
  log?: ActionLog;
}

export interface LockGuardResult {
  /** the disks (source paths) the standby's lock manager refused */
  disks: string[];
  /** what held them on the primary meanwhile */
  holder: 'vm' | 'probe';
  /** the standby libvirt's refusal, as it said it */
  refusal: string;
}

export interface GuardedDisk {
  type: 'file' | 'block';
  source: string;
  /** the image format (driver type), default raw */
  format: string;
}

/** States in which the VM's QEMU is there and holds its disks' locks. */
const HOLDING_STATES = new Set(['running', 'idle', 'in shutdown', 'crashed', 'pmsuspended', 'no state']);

export async function verifyLockGuard(o: LockGuardOptions): Promise<LockGuardResult> {
  const log = o.log ?? silentLog;
  const unguarded = (why: string): VesperError =>
    new VesperError(
      ErrorCode.FAILOVER_UNGUARDED,
      `refused, nothing fenced: ${why}. Failover needs libvirt's lock manager on both hosts: lock_manager = "lockd" in qemu.conf with virtlockd running and file_lockspace_dir in qemu-lockd.conf on storage both hosts share (or sanlock); see docs/failures.md#failover`,
    );

  const xml = await o.primary.xml(o.vm);
  const disks = guardedDisks(xml);
  if (disks.length === 0) throw unguarded(`${o.vm} has no writable file or block disk, and libvirt's lock manager guards only those`);
  const state = (await o.primary.state(o.vm)).state;

  const probes: Array<{ hv: Hypervisor; name: string; where: string }> = [];
  try {
    let holder: 'vm' | 'probe' = 'vm';
    if (!HOLDING_STATES.has(state)) {
      if (state === 'paused')
        throw unguarded(
          `${o.vm} is paused on the primary: libvirt releases a paused domain's disk locks while QEMU keeps the images open, so whether the standby would refuse a second copy cannot be checked`,
        );
      holder = 'probe';
      const name = probeName();
      try {
        await o.primary.createPaused(probeXml(name, xml, disks));
        probes.push({ hv: o.primary, name, where: 'primary' });
      } catch (err) {
        const e = VesperError.from(err, ErrorCode.LIBVIRT_CALL);
        if (e.code === ErrorCode.DISK_LOCKED)
          throw new VesperError(
            ErrorCode.DISK_LOCKED,
            `refused, nothing fenced: it is ${state} on the primary, but another QEMU holds its disks (a copy running elsewhere?): ${e.message}`,
            '',
            { cause: err },
          );
        if (e.code === ErrorCode.LIBVIRT_UNAVAILABLE) throw e;
        throw unguarded(`a paused probe with ${o.vm}'s disks could not be started on the primary to check: ${e.message}`);
      }
    }

    const name = probeName();
    try {
      await o.standby.createPaused(probeXml(name, xml, disks));
      probes.push({ hv: o.standby, name, where: 'standby' });
    } catch (err) {
      const e = VesperError.from(err, ErrorCode.LIBVIRT_CALL);
      if (e.code === ErrorCode.DISK_LOCKED && isLockManagerRefusal(e.message)) {
        log.info(
          { vm: o.vm, holder, disks: disks.map((d) => d.source) },
          'failover: the standby libvirt lock manager refuses a second copy',
        );
        return { disks: disks.map((d) => d.source), holder, refusal: e.message };
      }
      if (e.code === ErrorCode.DISK_LOCKED)
        throw unguarded(
          `only QEMU's own image locking refused a second copy on the standby (${e.message}), not libvirt's lock manager; QEMU's locks do not reach across hosts on all shared storage`,
        );
      if (e.code === ErrorCode.LIBVIRT_UNAVAILABLE)
        throw new VesperError(ErrorCode.ACTION_FAILED, `the standby's libvirt went away, nothing fenced: ${e.message}`);
      throw unguarded(`a paused probe with ${o.vm}'s disks could not be started on the standby to check: ${e.message}`);
    }
    throw unguarded(
      `the standby's libvirt started a second QEMU on ${disks.map((d) => d.source).join(', ')} while the primary's ${holder === 'vm' ? 'copy' : 'probe'} held them: it has no lock manager, or its lockspace is not the one the primary uses`,
    );
  } finally {
    for (const p of probes.reverse()) {
      await p.hv
        .destroy(p.name)
        .catch((err: Error) => log.warn({ vm: o.vm, probe: p.name, where: p.where, err: err.message }, 'guard probe not destroyed'));
    }
  }
}

/** The disks libvirt's lock manager takes an exclusive lock on: writable, not shareable, file or block. */
export function guardedDisks(xml: string): GuardedDisk[] {
  const out: GuardedDisk[] = [];
  for (const m of xml.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)) {
    const attrs = m[1] ?? '';
    const body = m[2] ?? '';
    const type = attr(attrs, 'type');
    const device = attr(attrs, 'device') ?? 'disk';
    if ((type !== 'file' && type !== 'block') || (device !== 'disk' && device !== 'lun')) continue;
    if (/<readonly\s*\/>/.test(body) || /<shareable\s*\/>/.test(body) || /<transient\b/.test(body)) continue;
    const source = /<source\b([^>]*)>/.exec(body)?.[1];
    const path = source ? attr(source, type === 'file' ? 'file' : 'dev') : undefined;
    if (!path) continue; // an empty drive
    const driver = /<driver\b([^>]*)>/.exec(body)?.[1];
    out.push({ type, source: unescapeXml(path), format: (driver && attr(driver, 'type')) || 'raw' });
  }
  return out;
}

/** A transient domain with the VM's guarded disks and nothing else, for a paused start. */
export function probeXml(name: string, vmXml: string, disks: GuardedDisk[]): string {
  const domainType = /^\s*<domain\b[^>]*\btype=(['"])([^'"]+)\1/.exec(vmXml)?.[2] ?? 'qemu';
  const osType = /<type\b[^>]*>[^<]*<\/type>/.exec(/<os\b[^>]*>([\s\S]*?)<\/os>/.exec(vmXml)?.[1] ?? '')?.[0] ?? '<type>hvm</type>';
  const emulator = /<emulator>[^<]*<\/emulator>/.exec(vmXml)?.[0] ?? '';
  const diskXml = disks.map((d, i) => {
    const src = d.type === 'file' ? `file='${escapeXml(d.source)}'` : `dev='${escapeXml(d.source)}'`;
    return `<disk type='${d.type}' device='disk'><driver name='qemu' type='${escapeXml(d.format)}'/><source ${src}/><target dev='vd${driveLetters(i)}' bus='virtio'/></disk>`;
  });
  return `<domain type='${escapeXml(domainType)}'>
  <name>${name}</name>
  <description>vesper failover guard probe: started paused, destroyed at once</description>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os>${osType}</os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    ${emulator}
    ${diskXml.join('\n    ')}
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

function probeName(): string {
  return `vesper-guard-${randomBytes(4).toString('hex')}`;
}

function driveLetters(i: number): string {
  let s = '';
  for (let n = i; n >= 0; n = Math.floor(n / 26) - 1) s = String.fromCharCode(97 + (n % 26)) + s;
  return s;
}

function attr(attrs: string, name: string): string | undefined {
  return new RegExp(`\\b${name}=(['"])([^'"]*)\\1`).exec(attrs)?.[2];
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function unescapeXml(s: string): string {
  return s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');
}
