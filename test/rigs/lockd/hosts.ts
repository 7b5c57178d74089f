// libvirtd "hosts" on this one machine (two or more), for failover guarded by libvirt's lock
// manager.
//
// Each host is a libvirtd (with its own virtlogd and virtlockd) in mount, network and UTS
// namespaces of its own: its /run/libvirt, /var/lib/libvirt, /var/log/libvirt,
// /var/cache/libvirt and /etc/libvirt are bind mounts of its own directories, so it has its own
// sockets, state and qemu.conf, and the machine's libvirtd (the lead's) is not touched. Both see
// the same image directory and the same lockd lockspace directory at the same paths: the shared
// storage of two real hosts. A host's socket is reachable from here through its run directory:
// qemu:///system?socket=<root>/<host>/run/libvirt-sock.
//
//   <root>/shared/images      disks (and nothing of a host's own)
//   <root>/shared/lockspace   virtlockd's file_lockspace_dir, when the host has lockd
//   <root>/<host>/{run,lib,log,cache,etc}
//
// qemu.conf also turns off what two daemons on one machine would fight over: cgroups (the same
// domain name and id on both hosts would be the same cgroup) and QEMU's per-domain mount
// namespace.
//
// QEMU's own image locking is off too, through the emulator the rig's domains name
// (`rig.emulator`, a wrapper adding locking=off to every file node QEMU opens): the "hosts" share
// one kernel, so its OFD locks would refuse a second copy by themselves, where between real hosts
// they do so only if the shared storage carries them. Without them, what refuses is libvirt's lock
// manager, which is what the tests are about. stop() destroys every domain, kills every process it started (by pid: libvirtd,
// virtlockd, virtlogd, QEMUs), which also ends the namespaces and their mounts, and removes the
// directories; it is safe to call twice and after a failed start.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep, waitFor } from '../../helpers/wait.js';

export type LockManager = 'lockd' | 'nop';

export interface HostSpec {
  name: string;
  /** libvirt's lock manager on this host: lockd (with the shared lockspace) or the default nop */
  lockManager: LockManager;
  /**
   * lockd's lockspace: the shared one (default), or a directory of this host's own (a lockspace
   * that is not on shared storage, to show that it guards nothing across hosts)
   */
  lockspace?: 'shared' | 'own';
}

export class LibvirtHost {
  readonly uri: string;
  readonly dir: string;
  proc: ChildProcess | null = null;
  private stderr = '';

  constructor(
    readonly spec: HostSpec,
    readonly rig: LibvirtHostsRig,
  ) {
    this.dir = join(rig.root, spec.name);
    this.uri = `qemu:///system?socket=${join(this.dir, 'run', 'libvirt-sock')}`;
  }

  /** Writes its configuration and starts virtlogd, virtlockd and libvirtd in new namespaces. */
  async start(): Promise<void> {
    for (const d of ['run', 'lib', 'log/qemu', 'cache/qemu/capabilities', 'etc/qemu', 'lockspace'])
      mkdirSync(join(this.dir, d), { recursive: true });
    mkdirSync(join(this.dir, 'lib', 'qemu'), { recursive: true });
    const lockspace = this.spec.lockspace === 'own' ? join(this.dir, 'lockspace') : this.rig.lockspaceDir;
    writeFileSync(
      join(this.dir, 'etc', 'qemu.conf'),
      [
        'user = "root"',
        'group = "root"',
        'security_driver = "none"',
        'cgroup_controllers = [ ]',
        'namespaces = [ ]',
        ...(this.spec.lockManager === 'lockd' ? ['lock_manager = "lockd"'] : []),
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(this.dir, 'etc', 'qemu-lockd.conf'),
      ['auto_disk_leases = 1', 'require_lease_for_disks = 1', `file_lockspace_dir = "${lockspace}"`, ''].join('\n'),
    );
    writeFileSync(join(this.dir, 'etc', 'libvirtd.conf'), 'log_outputs = "3:stderr"\n');
    // QEMU's capabilities as the machine's libvirtd cached them: saves each host ~8 s of probing
    // (libvirtd checks the cache against QEMU's binary and probes again if it does not fit).
    const caps = '/var/cache/libvirt/qemu/capabilities';
    if (existsSync(caps)) for (const f of readdirSync(caps)) copyFileSync(join(caps, f), join(this.dir, 'cache/qemu/capabilities', f));

    const run = join(this.dir, 'run');
    const script = [
      'set -e',
      `hostname vesper-${this.spec.name} 2>/dev/null || true`,
      'ip link set lo up 2>/dev/null || true',
      `mount --bind ${q(run)} /run/libvirt`,
      `mount --bind ${q(join(this.dir, 'lib'))} /var/lib/libvirt`,
      `mount --bind ${q(join(this.dir, 'log'))} /var/log/libvirt`,
      `mount --bind ${q(join(this.dir, 'cache'))} /var/cache/libvirt`,
      `mount --bind ${q(join(this.dir, 'etc'))} /etc/libvirt`,
      'virtlogd -d -p /run/libvirt/virtlogd.pid',
      'virtlockd -d -p /run/libvirt/virtlockd.pid',
      'exec libvirtd -p /run/libvirt/libvirtd.pid',
    ].join('\n');
    for (const d of ['/run/libvirt', '/var/lib/libvirt', '/var/log/libvirt', '/var/cache/libvirt', '/etc/libvirt'])
      mkdirSync(d, { recursive: true });
    // unshare execs bash, bash execs libvirtd: this child's pid is libvirtd's.
    this.proc = spawn('unshare', ['--mount', '--net', '--uts', '--propagation', 'private', '--', 'bash', '-c', script], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.proc.stderr!.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString()).slice(-4000);
    });
    await waitFor(
      `libvirtd of host ${this.spec.name} answering`,
      () => {
        if (this.proc?.exitCode !== null) throw new Error(`libvirtd of host ${this.spec.name} exited: ${this.stderr.trim()}`);
        return this.virsh(['version'], 15_000).status === 0;
      },
      60_000,
      300,
    );
  }

  /** virsh against this host; never throws. */
  virsh(args: string[], timeoutMs = 30_000): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync('virsh', ['-c', this.uri, ...args], { encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, LC_ALL: 'C' } });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** Names of the domains QEMU runs for (running or paused) on this host. */
  running(): string[] {
    const r = this.virsh(['list', '--name']);
    return r.stdout
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean);
  }

  /** The last of libvirtd's own log lines (stderr), for failure messages. */
  log(): string {
    return this.stderr;
  }

  /** Stops libvirtd only (its QEMUs keep running, as on a host whose libvirt is down). */
  async stopLibvirtd(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill('SIGTERM');
    for (let i = 0; i < 50 && p.exitCode === null && p.signalCode === null; i++) await sleep(100);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (let i = 0; i < 20 && p.exitCode === null && p.signalCode === null; i++) await sleep(100);
  }

  /** Everything of this host ends: domains destroyed, then every process it started killed. */
  async stop(): Promise<void> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      for (const name of this.running()) this.virsh(['destroy', name], 15_000);
    }
    await this.stopLibvirtd();
    // QEMUs that outlived libvirtd (pid files under its run directory), then its two helpers.
    const qemuRun = join(this.dir, 'run', 'qemu');
    const pids: Array<[string, number]> = [];
    if (existsSync(qemuRun))
      for (const f of readdirSync(qemuRun).filter((f) => f.endsWith('.pid'))) pids.push(['qemu-system-x86', readPid(join(qemuRun, f))]);
    pids.push(['virtlockd', readPid(join(this.dir, 'run', 'virtlockd.pid'))]);
    pids.push(['virtlogd', readPid(join(this.dir, 'run', 'virtlogd.pid'))]);
    for (const [comm, pid] of pids) killIf(pid, comm);
    for (let i = 0; i < 30 && pids.some(([comm, pid]) => alive(pid, comm)); i++) await sleep(100);
  }
}

export class LibvirtHostsRig {
  readonly root: string;
  readonly imagesDir: string;
  readonly lockspaceDir: string;
  /** the emulator for the rig's domains: QEMU with its own image locking off (see the header) */
  readonly emulator: string;
  readonly hosts: Record<string, LibvirtHost> = {};

  constructor(specs: HostSpec[]) {
    // Short: unix socket paths are limited to 107 bytes.
    this.root = mkdtempSync('/tmp/vlk-');
    this.imagesDir = join(this.root, 'shared', 'images');
    this.lockspaceDir = join(this.root, 'shared', 'lockspace');
    mkdirSync(this.imagesDir, { recursive: true });
    mkdirSync(this.lockspaceDir, { recursive: true });
    this.emulator = join(this.root, 'shared', 'qemu-nolock');
    writeFileSync(
      this.emulator,
      [
        '#!/bin/bash',
        '# QEMU without its own image locking: every file node opened with locking=off.',
        `from='"driver":"file"'`,
        `to='"driver":"file","locking":"off"'`,
        'args=()',
        'for a in "$@"; do args+=("${a//$from/$to}"); done',
        'exec /usr/bin/qemu-system-x86_64 "${args[@]}"',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    for (const s of specs) this.hosts[s.name] = new LibvirtHost(s, this);
  }

  host(name: string): LibvirtHost {
    const h = this.hosts[name];
    if (!h) throw new Error(`no host ${name} in this rig`);
    return h;
  }

  /** Starts every host, one after the other (each reads or probes QEMU's capabilities at its start). */
  async start(): Promise<void> {
    for (const h of Object.values(this.hosts)) await h.start();
  }

  /** A sparse raw disk in the shared image directory. */
  disk(name: string, mib = 16): string {
    const file = join(this.imagesDir, `${name}.raw`);
    const r = spawnSync('truncate', ['-s', `${mib}M`, file]);
    if (r.status !== 0) throw new Error(`truncate ${file}: ${r.stderr?.toString()}`);
    return file;
  }

  /** Every host stopped (see LibvirtHost.stop), then the directories removed. Safe to call twice. */
  async stop(): Promise<void> {
    await Promise.allSettled(Object.values(this.hosts).map((h) => h.stop()));
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Why this rig cannot run here, or ''. */
export function whyNoLibvirtHostsRig(): string {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'needs an x86-64 Linux host';
  if (process.getuid?.() !== 0) return 'needs root (namespaces, libvirtd)';
  for (const bin of ['unshare', 'libvirtd', 'virtlockd', 'virtlogd', 'virsh', 'qemu-system-x86_64']) {
    if (spawnSync('sh', ['-c', `command -v ${bin}`]).status !== 0)
      return `${bin} is not installed (scripts/host-setup.sh installs libvirt)`;
  }
  if (!existsSync('/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/lockd.so')) return "libvirt's lockd plugin is not installed";
  const r = spawnSync('unshare', ['--mount', '--net', '--uts', '--', 'true']);
  if (r.status !== 0) return `cannot make namespaces here: ${r.stderr?.toString().trim()}`;
  return '';
}

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function readPid(file: string): number {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(n) && n > 1 ? n : 0;
  } catch {
    return 0;
  }
}

/** Whether `pid` is a live process named `comm` (a pid file's pid may have been reused). */
function alive(pid: number, comm: string): boolean {
  if (!pid) return false;
  try {
    const c = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return c.startsWith(comm.slice(0, 15)) && state !== 'Z';
  } catch {
    return false;
  }
}

function killIf(pid: number, comm: string): void {
  if (alive(pid, comm)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}
