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
//   1. a holder of the disks on the primary: the VM itself when its QEMU runs there, else a
//      probe — a transient domain with the VM's writable disks
//   2. the same disks in a probe on the standby, which must be refused
//   3. the probes are destroyed, whatever happened
//
// A probe is started paused and then resumed, because libvirt's lock manager takes a domain's
// locks only when its CPUs start. Its only boot device is an empty CD-ROM (libvirt then tells
// the firmware to boot nothing else), so a probe whose CPUs do run executes firmware only, never
// the VM's disk, and is destroyed at once.
//
// The standby's refusal may come from libvirt's lock manager ("Lockspace resource … is locked",
// "Failed to acquire lock") or, earlier, from QEMU's own image locking ('Failed to get "write"
// lock'): QEMU opens the disks, and locks them where the storage carries its locks across hosts
// (NFSv4), before libvirt asks its lock manager, so where both are on the second one is never
// seen. Either refusal shows that this standby cannot start a second copy while the primary's
// runs; the result says which it was. A probe that starts on the standby means no lock manager
// there, or a lockspace the primary's libvirt does not use: VSP_FAILOVER_UNGUARDED, nothing
// fenced. A probe refused on the primary while the VM is not running there means another QEMU —
// a copy elsewhere — holds the disks: VSP_DISK_LOCKED, nothing fenced.
//
// Errors carry the reason only; the caller says whose failover it was.
//
// Limits: libvirt releases a paused domain's locks (and takes them again on resume), so a VM
// paused on the primary cannot be the holder and is refused as unguarded, saying why. Disks
// libvirt's lock manager does not lock (read-only, shareable, network disks) do not count; a VM
// with none of its own is refused too.
import { randomBytes } from 'node:crypto';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { isLockManagerRefusal } from '../libvirt/lock-refusal.js';
import { silentLog, type ActionLog } from './log.js';
import { escapeXml, unescapeXml } from '../libvirt/xml-text.js';

export interface LockGuardOptions {
  vm: string;
  primary: Hypervisor;
  standby: Hypervisor;
  log?: ActionLog;
}

export interface LockGuardResult {
  /** the disks (source paths) the standby would not open a second time */
  disks: string[];
  /** what held them on the primary meanwhile */
  holder: 'vm' | 'probe';
  /** who refused on the standby: libvirt's lock manager, or QEMU's own image lock before it */
  by: 'lock-manager' | 'qemu-image-lock';
  /** the standby libvirt's refusal, as it said it */
  refusal: string;
}

export interface GuardedDisk {
  type: 'file' | 'block';
  source: string;
  /** the image format (driver type), default raw */
  format: string;
}

/** States in which the VM's QEMU runs with its CPUs and so holds its disks' locks. */
const HOLDING_STATES = new Set(['running', 'idle', 'in shutdown', 'crashed', 'pmsuspended', 'no state']);

interface Probe {
  hv: Hypervisor;
  name: string;
  where: 'primary' | 'standby';
}

type ProbeOutcome =
  { kind: 'started' } | { kind: 'refused'; by: LockGuardResult['by']; message: string } | { kind: 'error'; error: VesperError };

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
  const paths = disks.map((d) => d.source).join(', ');

  const probes: Probe[] = [];
  try {
    let holder: 'vm' | 'probe' = 'vm';
    if (!HOLDING_STATES.has(state)) {
      if (state === 'paused')
        throw unguarded(
          `${o.vm} is paused on the primary: libvirt releases a paused domain's disk locks, so whether the standby would refuse a second copy cannot be checked`,
        );
      holder = 'probe';
      const p1 = await tryProbe(o.primary, 'primary', xml, disks, probes);
      if (p1.kind === 'refused')
        throw new VesperError(
          ErrorCode.DISK_LOCKED,
          `refused, nothing fenced: it is ${state} on the primary, but another QEMU holds its disks (a copy running elsewhere?): ${p1.message}`,
        );
      if (p1.kind === 'error') {
        if (p1.error.code === ErrorCode.LIBVIRT_UNAVAILABLE) throw p1.error;
        throw unguarded(`a probe with ${o.vm}'s disks could not be started on the primary to check: ${p1.error.message}`);
      }
    }

    const p2 = await tryProbe(o.standby, 'standby', xml, disks, probes);
    if (p2.kind === 'refused') {
      log.info({ vm: o.vm, holder, by: p2.by, disks: disks.map((d) => d.source) }, 'failover: the standby refuses a second copy');
      return { disks: disks.map((d) => d.source), holder, by: p2.by, refusal: p2.message };
    }
    if (p2.kind === 'error') {
      if (p2.error.code === ErrorCode.LIBVIRT_UNAVAILABLE)
        throw new VesperError(ErrorCode.ACTION_FAILED, `the standby's libvirt went away, nothing fenced: ${p2.error.message}`);
      throw unguarded(`a probe with ${o.vm}'s disks could not be started on the standby to check: ${p2.error.message}`);
    }
    throw unguarded(
      `the standby's libvirt started a second QEMU on ${paths} while the primary's ${holder === 'vm' ? 'copy' : 'probe'} held them: it has no lock manager, or its lockspace is not the one the primary uses`,
    );
  } finally {
    for (const p of probes.reverse()) {
      await p.hv
        .destroy(p.name)
        .catch((err: Error) => log.warn({ vm: o.vm, probe: p.name, where: p.where, err: err.message }, 'guard probe not destroyed'));
    }
  }
}

/** Starts a probe paused, then lets its CPUs run (when libvirt's lock manager takes the locks). */
async function tryProbe(
  hv: Hypervisor,
  where: Probe['where'],
  vmXml: string,
  disks: GuardedDisk[],
  probes: Probe[],
): Promise<ProbeOutcome> {
  const name = probeName();
  try {
    await hv.createPaused(probeXml(name, vmXml, disks));
  } catch (err) {
    return outcomeOf(err);
  }
  probes.push({ hv, name, where });
  try {
    await hv.resume(name);
  } catch (err) {
    return outcomeOf(err);
  }
  return { kind: 'started' };
}

function outcomeOf(err: unknown): ProbeOutcome {
  const e = VesperError.from(err, ErrorCode.LIBVIRT_CALL);
  if (e.code === ErrorCode.DISK_LOCKED)
    return { kind: 'refused', by: isLockManagerRefusal(e.message) ? 'lock-manager' : 'qemu-image-lock', message: e.message };
  return { kind: 'error', error: e };
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
  // the only boot device: an empty CD-ROM (IDE on pc, SATA on q35); libvirt then has the firmware
  // boot strictly from the listed devices, so the VM's disk is never booted
  const cdBus = /machine=(['"])[^'"]*q35/.test(osType) ? 'sata' : 'ide';
  const diskXml = disks.map((d, i) => {
    const src = d.type === 'file' ? `file='${escapeXml(d.source)}'` : `dev='${escapeXml(d.source)}'`;
    return `<disk type='${d.type}' device='disk'><driver name='qemu' type='${escapeXml(d.format)}'/><source ${src}/><target dev='vd${driveLetters(i)}' bus='virtio'/></disk>`;
  });
  return `<domain type='${escapeXml(domainType)}'>
  <name>${name}</name>
  <description>vesper failover guard probe: boots nothing, destroyed at once</description>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os>${osType}<bootmenu enable='no'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    ${emulator}
    <disk type='file' device='cdrom'><target dev='${cdBus === 'ide' ? 'hdc' : 'sdz'}' bus='${cdBus}'/><readonly/><boot order='1'/></disk>
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
