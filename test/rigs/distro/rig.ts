// A Debian guest (test/rigs/distro/image.ts) under the real libvirtd: direct kernel boot of
// the cached image through a qcow2 overlay of its own, 1 vCPU, KVM when it boots and TCG
// otherwise (the choice of test/rigs/vm is shared: one probe per host boot), the vesper
// virtio-serial channel on a unix socket, the serial console in a file, and root's sshd
// reachable on 127.0.0.1:<port> through QEMU's user-mode network.
//
//   const g = await bootDistro('debian12');       // waits for sshd and the agent's unit
//   await g.ssh('systemctl kill -s USR1 vesper-crashy');
//   const client = await g.connectAgent();         // or leave the channel to a vesperd
//   await g.destroy();
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCode, VesperError } from '../../../proto/errors.js';
import { AgentClient, type AgentClientOptions } from '../../../host/channel/agent-client.js';
import { loadOrCreateHostKey, type HostKey } from '../../../host/keys.js';
import type { Hypervisor } from '../../../host/libvirt/hypervisor.js';
import { UnraidHypervisor } from '../../../host/libvirt/unraid.js';
import { readProbeBundle, signModule } from '../../../host/probes/package.js';
import { projectRoot } from '../../helpers/project-root.js';
import { AGENT_PORT } from '../image/guest-scripts.js';
import { channelXml, type Accel } from '../vm/domain.js';
import { KVM_PROBE_MS, accelCacheFile, bootId, cachedAccel } from '../vm/rig.js';
import { buildDistroImage, DISTRO_KERNEL_CMDLINE, overlayOf, type Distro, type DistroImage } from './image.js';

const execFileP = promisify(execFile);

export interface DistroGuestOptions {
  name?: string;
  accel?: 'auto' | Accel;
  /** default 768 */
  memoryMiB?: number;
  /** define the agent's channel (default); false: none until `vesper channel add` or addChannel() */
  agentChannel?: boolean;
  /**
   * What boot() waits for: 'agent' (default: sshd answers and vesper-agent.service is active),
   * 'ssh' (sshd answers), 'none' (the domain started).
   */
  waitFor?: 'agent' | 'ssh' | 'none';
  /** budget for the wait, default 420 s (TCG on a loaded 2-core machine: seen > 180 s under load 15) */
  bootBudgetMs?: number;
  uri?: string;
  onProgress?: (step: string, detail?: string) => void;
}

export interface SshResult {
  stdout: string;
  stderr: string;
  code: number;
}

const esc = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

export interface DistroDomainSpec {
  name: string;
  accel: Accel;
  image: DistroImage;
  overlay: string;
  consoleLog: string;
  memoryMiB: number;
  sshPort: number;
  /** the agent's socket, or null for a domain without the channel */
  agentSocket: string | null;
}

/** The libvirt domain of a Debian test guest. */
export function distroDomainXml(s: DistroDomainSpec): string {
  const cpu = s.accel === 'kvm' ? `<cpu mode='host-passthrough'/>` : `<cpu mode='maximum'/>`;
  // QEMU's user-mode network with a port forward to sshd: libvirt 9.0's <interface type='user'>
  // has no port forwarding (only with passt), so the two arguments go to QEMU directly. Its
  // arguments come before libvirt's devices: the NIC takes the last PCI slot, never one libvirt
  // assigns (from slot 2 up).
  return `<domain type='${s.accel === 'kvm' ? 'kvm' : 'qemu'}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${esc(s.name)}</name>
  <memory unit='MiB'>${s.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(s.image.kernel)}</kernel>
    <initrd>${esc(s.image.initrd)}</initrd>
    <cmdline>${esc(DISTRO_KERNEL_CMDLINE)}</cmdline>
  </os>
  ${cpu}
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${esc(s.overlay)}'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='${esc(s.consoleLog)}'/><target port='0'/></serial>
    <controller type='virtio-serial' index='0'/>
    ${s.agentSocket ? channelXml(AGENT_PORT, s.agentSocket) : ''}
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <panic model='isa'><address type='isa' iobase='0x505'/></panic>
    <watchdog model='i6300esb' action='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=vesnet0,hostfwd=tcp:127.0.0.1:${s.sshPort}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=vesnet0,bus=pci.0,addr=0x1f'/>
  </qemu:commandline>
</domain>
`;
}

/** A free TCP port on 127.0.0.1 (the kernel's choice; QEMU binds it a moment later). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class DistroGuest {
  readonly name: string;
  readonly dir: string;
  readonly agentSocket: string;
  readonly consoleLog: string;
  readonly overlay: string;
  readonly key: HostKey;
  sshPort = 0;
  accel: Accel = 'tcg';
  hv!: Hypervisor;
  image!: DistroImage;
  /** ms from the domain's start to what boot() waited for */
  bootMs = 0;
  private defined = false;
  private readonly progress: (step: string, detail?: string) => void;

  constructor(
    readonly distro: Distro,
    readonly opts: DistroGuestOptions = {},
  ) {
    this.name = opts.name ?? `vesper-${distro}-${randomBytes(3).toString('hex')}`;
    this.dir = mkdtempSync('/tmp/vesper-distro-'); // short: unix socket paths have 107 bytes
    this.agentSocket = join(this.dir, 'agent.sock');
    this.consoleLog = join(this.dir, 'console.log');
    this.overlay = join(this.dir, 'disk.qcow2');
    this.key = loadOrCreateHostKey(join(projectRoot(), '.cache', 'keys'));
    this.progress = opts.onProgress ?? (() => undefined);
  }

  /** Host set-up (idempotent), the image (built or cached), the libvirt connection. */
  async prepare(): Promise<void> {
    this.progress('host set-up', 'libvirtd and virtlogd');
    execFileSync('bash', [join(projectRoot(), 'scripts/host-setup.sh'), 'start'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 600_000,
    });
    this.image = await buildDistroImage(this.distro, { hostPubKeyPem: this.key.publicPem, onProgress: this.progress });
    this.hv = await UnraidHypervisor.connect(this.opts.uri);
  }

  domainXml(accel: Accel = this.accel): string {
    return distroDomainXml({
      name: this.name,
      accel,
      image: this.image,
      overlay: this.overlay,
      consoleLog: this.consoleLog,
      memoryMiB: this.opts.memoryMiB ?? 768,
      sshPort: this.sshPort,
      agentSocket: this.opts.agentChannel === false ? null : this.agentSocket,
    });
  }

  /** Defines and starts the guest (KVM probed once per host boot, else TCG) and waits as opts.waitFor says. */
  async boot(): Promise<void> {
    const want = this.opts.accel ?? 'auto';
    let accel: Accel = want === 'auto' ? (cachedAccel() ?? 'tcg') : want;
    const probeKvm = want === 'kvm' || (want === 'auto' && existsSync('/dev/kvm') && cachedAccel() === null);
    if (probeKvm) {
      this.progress('boot', 'trying KVM');
      try {
        await this.startAndWait('kvm', KVM_PROBE_MS, 'ssh');
        this.remember('kvm');
        if (this.waitFor() === 'agent') await this.waitAgentUnit(60_000);
        return;
      } catch (err) {
        if (want === 'kvm') throw err;
        this.progress('boot', `KVM did not bring sshd up within ${KVM_PROBE_MS / 1000} s; using TCG`);
        await this.undefine();
        accel = 'tcg';
      }
    }
    await this.startAndWait(accel, this.opts.bootBudgetMs ?? 420_000, this.waitFor());
    if (want === 'auto') this.remember(accel);
  }

  /** What boot() waits for: the agent only where it has a channel to start on. */
  private waitFor(): 'agent' | 'ssh' | 'none' {
    return this.opts.waitFor ?? (this.opts.agentChannel === false ? 'ssh' : 'agent');
  }

  private remember(accel: Accel): void {
    mkdirSync(join(projectRoot(), '.cache'), { recursive: true });
    writeFileSync(accelCacheFile(), JSON.stringify({ bootId: bootId(), accel }));
  }

  private async startAndWait(accel: Accel, budgetMs: number, waitFor: 'agent' | 'ssh' | 'none'): Promise<void> {
    this.accel = accel;
    rmSync(this.consoleLog, { force: true });
    rmSync(this.overlay, { force: true });
    await overlayOf(this.image, this.overlay);
    this.sshPort = await freePort();
    await this.hv.define(this.domainXml(accel));
    this.defined = true;
    const t0 = performance.now();
    await this.hv.start(this.name);
    this.progress('boot', `started ${this.name} (${this.distro}, kernel ${this.image.kernelRelease}) under ${accel.toUpperCase()}`);
    const deadline = Date.now() + budgetMs;
    if (waitFor !== 'none') await this.waitSsh(deadline - Date.now());
    if (waitFor === 'agent') await this.waitAgentUnit(Math.max(1000, deadline - Date.now()));
    this.bootMs = performance.now() - t0;
    this.progress('boot', `${this.name} ready (${waitFor}) after ${(this.bootMs / 1000).toFixed(1)} s`);
  }

  /** The ssh(1) arguments that reach root in this guest (for tools that want to run ssh themselves). */
  sshArgs(): string[] {
    return [
      '-i',
      this.image.sshKey,
      '-p',
      String(this.sshPort),
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      'UserKnownHostsFile=/dev/null',
      '-o',
      'LogLevel=ERROR',
      '-o',
      'ConnectTimeout=10',
      '-o',
      'ServerAliveInterval=5',
      '-o',
      'ServerAliveCountMax=6',
      'root@127.0.0.1',
    ];
  }

  /** Runs a shell command as root in the guest; never throws for a non-zero status. */
  async sshRun(cmd: string, timeoutMs = 60_000): Promise<SshResult> {
    try {
      const { stdout, stderr } = await execFileP('ssh', [...this.sshArgs(), cmd], { timeout: timeoutMs, maxBuffer: 32 << 20 });
      return { stdout, stderr, code: 0 };
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string; code?: number | string; killed?: boolean };
      if (e.killed) return { stdout: e.stdout ?? '', stderr: `timed out after ${timeoutMs} ms`, code: 124 };
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? e.message, code: typeof e.code === 'number' ? e.code : 255 };
    }
  }

  /** Runs a shell command as root in the guest; its stdout, or an error with its stderr. */
  async ssh(cmd: string, timeoutMs = 60_000): Promise<string> {
    const r = await this.sshRun(cmd, timeoutMs);
    if (r.code !== 0) throw new Error(`ssh ${this.name} "${cmd}" exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  }

  async waitSsh(budgetMs = 180_000): Promise<void> {
    const deadline = Date.now() + budgetMs;
    let last = '';
    for (let i = 0; Date.now() < deadline && i < 1000; i++) {
      const r = await this.sshRun('true', Math.min(20_000, Math.max(1000, deadline - Date.now())));
      if (r.code === 0) return;
      last = r.stderr.trim();
      await sleep(1000);
    }
    throw new VesperError(
      ErrorCode.HANDSHAKE_TIMEOUT,
      `sshd in ${this.name} did not answer within ${budgetMs / 1000} s (${last}); console: ${this.consoleTail()}`,
    );
  }

  /** Waits until systemd reports vesper-agent.service active (the udev rule started it). */
  async waitAgentUnit(budgetMs = 60_000): Promise<void> {
    const deadline = Date.now() + budgetMs;
    let last = '';
    for (let i = 0; Date.now() < deadline && i < 1000; i++) {
      const r = await this.sshRun('systemctl is-active vesper-agent.service', 20_000);
      last = r.stdout.trim() || r.stderr.trim();
      if (r.code === 0) return;
      await sleep(500);
    }
    const status = (await this.sshRun('systemctl status --no-pager -n 20 vesper-agent.service', 20_000)).stdout;
    throw new VesperError(ErrorCode.HANDSHAKE_TIMEOUT, `vesper-agent.service in ${this.name} is not active (${last}): ${status}`);
  }

  /** A client on the agent's channel, its handshake done (the guest may still be booting). */
  async connectAgent(budgetMs = 60_000, clientOpts: AgentClientOptions = {}): Promise<AgentClient> {
    const deadline = Date.now() + budgetMs;
    let last: unknown;
    for (let i = 0; Date.now() < deadline && i < 10_000; i++) {
      try {
        return await AgentClient.connectUnix(this.agentSocket, {
          handshakeTimeoutMs: Math.max(1000, deadline - Date.now()),
          ...clientOpts,
        });
      } catch (err) {
        last = err;
        await sleep(200);
      }
    }
    throw new VesperError(
      ErrorCode.HANDSHAKE_TIMEOUT,
      `the agent in ${this.name} did not answer within ${budgetMs / 1000} s (${(last as Error)?.message ?? 'no attempt'})`,
    );
  }

  /** A probe module signed with the key the image's agent trusts. */
  module(name: string) {
    return signModule(readProbeBundle(name), this.key);
  }

  /** Hot-plugs the agent's channel into the running guest (what `vesper channel add --live` does). */
  async addChannel(): Promise<void> {
    await this.hv.attachDevice(this.name, channelXml(AGENT_PORT, this.agentSocket), { live: true, config: false });
  }

  async removeChannel(): Promise<void> {
    await this.hv.detachDevice(this.name, channelXml(AGENT_PORT, this.agentSocket), { live: true, config: false });
  }

  consoleTail(n = 2000): string {
    try {
      return readFileSync(this.consoleLog, 'utf8').slice(-n);
    } catch {
      return '(no console log)';
    }
  }

  private async undefine(): Promise<void> {
    if (!this.defined) return;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.hv.destroy(this.name);
        break;
      } catch {
        const st = await this.hv.state(this.name).catch(() => null);
        if (st?.state === 'shut off' || st === null) break;
      }
    }
    try {
      await this.hv.undefine(this.name);
    } catch {
      /* not defined */
    }
    this.defined = false;
  }

  /** Stops and undefines the guest and removes its files (overlay, sockets, console log). */
  async destroy(): Promise<void> {
    await this.undefine();
    await this.hv?.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Builds (or reuses) the image, boots a guest of it and waits for sshd and the agent. */
export async function bootDistro(distro: Distro, opts: DistroGuestOptions = {}): Promise<DistroGuest> {
  const g = new DistroGuest(distro, opts);
  try {
    await g.prepare();
    await g.boot();
    return g;
  } catch (err) {
    await g.destroy().catch(() => undefined);
    throw err;
  }
}
