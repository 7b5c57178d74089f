// A vesper guest under a real libvirtd: the image built (or reused), the domain defined and
// started (KVM when it boots, TCG otherwise, and which one is said), the agent reached over
// its virtio-serial channel, and everything stopped and undefined again.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { ErrorCode, VesperError } from '../../../proto/errors.js';
import { AgentClient, type AgentClientOptions } from '../../../host/channel/agent-client.js';
import { buildGuestImage, GUEST_KERNEL_CMDLINE } from '../image/build.js';
import { loadOrCreateHostKey, type HostKey } from '../../../host/keys.js';
import type { Hypervisor } from '../../../host/libvirt/hypervisor.js';
import { LibvirtEvents } from '../../../host/libvirt/events.js';
import { UnraidHypervisor } from '../../../host/libvirt/unraid.js';
import { readProbeBundle, signModule } from '../../../host/probes/package.js';
import { projectRoot } from '../../helpers/project-root.js';
import { waitFor } from '../../helpers/wait.js';
import { AGENT_PORT, TEST_PORT } from '../image/guest-scripts.js';
import { channelXml, guestDomainXml, type Accel } from './domain.js';

export interface VmRigOptions {
  name?: string;
  testHelpers?: boolean;
  accel?: 'auto' | Accel;
  memoryMiB?: number;
  vcpus?: number;
  onProgress?: (step: string, detail?: string) => void;
  uri?: string;
  /** define the agent's channel (default); false: a guest that has none until one is hot-plugged */
  agentChannel?: boolean;
  /** stress-ng in the image, started through the test helper (implies testHelpers) */
  stressTools?: boolean;
  /**
   * A scratch disk of this size (an ext4 raw file in the rig's directory, removed with it),
   * the guest's /dev/vda; the helper mounts it for stress-ng's files. Needs stressTools.
   */
  scratchDiskMiB?: number;
  /**
   * Start the agent as its package does, with no host key: it enrols with the first host over
   * its port (docs/trust.md). Default: it is given the rig's key (--host-key).
   */
  enrol?: boolean;
}

export const KVM_PROBE_MS = 25_000;

export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

export const accelCacheFile = (): string => join(projectRoot(), '.cache', 'accel.json');

/** What booted on this host since it last started (the KVM probe is done once per host boot). */
export function cachedAccel(): Accel | null {
  try {
    const c = JSON.parse(readFileSync(accelCacheFile(), 'utf8')) as { bootId: string; accel: Accel };
    return c.bootId === bootId() ? c.accel : null;
  } catch {
    return null;
  }
}

export class VmRig {
  readonly name: string;
  readonly dir: string;
  readonly agentSocket: string;
  readonly testSocket: string;
  readonly consoleLog: string;
  /** the scratch disk's file, when the rig has one */
  readonly scratchDisk: string | null;
  readonly key: HostKey;
  accel: Accel = 'tcg';
  hv!: Hypervisor;
  events!: LibvirtEvents;
  image!: Awaited<ReturnType<typeof buildGuestImage>>;
  private defined = false;
  private readonly progress: (step: string, detail?: string) => void;

  constructor(readonly opts: VmRigOptions = {}) {
    this.name = opts.name ?? `vesper-test-${randomBytes(3).toString('hex')}`;
    // Short paths: unix socket paths are limited to 107 bytes.
    this.dir = mkdtempSync('/tmp/vesper-vm-');
    this.agentSocket = join(this.dir, 'agent.sock');
    this.testSocket = join(this.dir, 'test.sock');
    this.consoleLog = join(this.dir, 'console.log');
    this.scratchDisk = opts.scratchDiskMiB ? join(this.dir, 'scratch.img') : null;
    this.key = loadOrCreateHostKey(join(projectRoot(), '.cache', 'keys'));
    this.progress = opts.onProgress ?? (() => undefined);
  }

  /** Host set-up (idempotent), image, libvirt connection and event stream. */
  async prepare(): Promise<void> {
    this.progress('host set-up', 'libvirtd and virtlogd');
    execFileSync('bash', [join(projectRoot(), 'scripts/host-setup.sh'), 'start'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 600_000,
    });
    this.progress('guest image');
    this.image = await buildGuestImage({
      hostPubKeyPem: this.key.publicPem,
      testHelpers: this.opts.testHelpers ?? true,
      stressTools: this.opts.stressTools ?? false,
      onProgress: this.progress,
    });
    if (this.scratchDisk && !existsSync(this.scratchDisk)) {
      this.progress('scratch disk', `${this.opts.scratchDiskMiB} MiB ext4 at ${this.scratchDisk}`);
      // Sparse: only what the guest writes takes room on the host, and it goes with the rig's dir.
      execFileSync('truncate', ['-s', `${this.opts.scratchDiskMiB}M`, this.scratchDisk]);
      execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'vesper-scratch', this.scratchDisk], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    this.hv = await UnraidHypervisor.connect(this.opts.uri);
    this.events = new LibvirtEvents(this.opts.uri);
    this.events.start();
  }

  /** The domain XML this rig defines (also what a cluster manager's VirtualDomain is given). */
  domainXml(accel: Accel = this.accel): string {
    return this.xml(accel);
  }

  private xml(accel: Accel): string {
    return guestDomainXml({
      name: this.name,
      accel,
      kernel: this.image.kernel,
      initrd: this.image.initrd,
      cmdline: this.opts.enrol ? `${GUEST_KERNEL_CMDLINE} vesper.enrol=1` : GUEST_KERNEL_CMDLINE,
      memoryMiB: this.opts.memoryMiB ?? 512,
      vcpus: this.opts.vcpus ?? 1,
      consoleLog: this.consoleLog,
      channels: {
        ...(this.opts.agentChannel === false ? {} : { [AGENT_PORT]: this.agentSocket }),
        ...(this.opts.testHelpers === false && !this.opts.stressTools ? {} : { [TEST_PORT]: this.testSocket }),
      },
      disks: this.scratchDisk ? [this.scratchDisk] : [],
    });
  }

  /** Defines and starts the guest and returns a client whose handshake is done. */
  async boot(clientOpts: AgentClientOptions = {}): Promise<AgentClient> {
    const want = this.opts.accel ?? 'auto';
    const cacheFile = accelCacheFile();
    let accel: Accel = want === 'auto' ? 'tcg' : want;
    let tryKvm = want === 'kvm';
    if (want === 'auto' && existsSync('/dev/kvm')) {
      const cached = cachedAccel();
      if (cached) accel = cached;
      else tryKvm = true;
    }
    if (tryKvm) {
      this.progress('boot', 'trying KVM');
      try {
        const c = await this.startAndConnect('kvm', KVM_PROBE_MS, clientOpts);
        this.remember(cacheFile, 'kvm');
        return c;
      } catch (err) {
        if (want === 'kvm') throw err;
        this.progress('boot', `KVM did not bring the agent up within ${KVM_PROBE_MS / 1000} s; using TCG`);
        await this.destroy();
        accel = 'tcg';
      }
    }
    const c = await this.startAndConnect(accel, 120_000, clientOpts);
    if (want === 'auto') this.remember(cacheFile, accel);
    return c;
  }

  /** Defines and starts the guest without waiting for an agent (it may have no channel yet). */
  async startOnly(): Promise<void> {
    const want = this.opts.accel ?? 'auto';
    this.accel = want !== 'auto' ? want : (cachedAccel() ?? 'tcg');
    rmSync(this.consoleLog, { force: true });
    await this.hv.define(this.xml(this.accel));
    this.defined = true;
    await this.hv.start(this.name);
    this.progress('boot', `started ${this.name} under ${this.accel.toUpperCase()} (no agent wait)`);
  }

  /** Waits (bounded) until the guest's fault helper answers: the guest is up, whatever its agent does. */
  async waitFaultHelper(timeoutMs = 180_000): Promise<void> {
    await waitFor(
      'the guest fault helper answers',
      () =>
        this.fault('ping', 5000).then(
          () => true,
          () => false,
        ),
      timeoutMs,
      1000,
    );
  }

  /** The VESPER "activate" step: hot-plugs the agent's channel into the running guest. */
  async activate(): Promise<void> {
    await this.hv.attachDevice(this.name, channelXml(AGENT_PORT, this.agentSocket), { live: true, config: false });
  }

  /** Removes the agent's channel from the running guest again. */
  async deactivate(): Promise<void> {
    await this.hv.detachDevice(this.name, channelXml(AGENT_PORT, this.agentSocket), { live: true, config: false });
  }

  private remember(file: string, accel: Accel): void {
    mkdirSync(join(projectRoot(), '.cache'), { recursive: true });
    writeFileSync(file, JSON.stringify({ bootId: bootId(), accel }));
  }

  private async startAndConnect(accel: Accel, budgetMs: number, clientOpts: AgentClientOptions): Promise<AgentClient> {
    this.accel = accel;
    rmSync(this.consoleLog, { force: true });
    await this.hv.define(this.xml(accel));
    this.defined = true;
    await this.hv.start(this.name);
    this.progress('boot', `started ${this.name} under ${accel.toUpperCase()}`);
    return this.connectAgent(budgetMs, clientOpts);
  }

  /** Connects to the agent's channel; the guest may still be booting. */
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
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    throw new VesperError(
      ErrorCode.HANDSHAKE_TIMEOUT,
      `the agent in ${this.name} did not answer within ${budgetMs / 1000} s (${(last as Error)?.message ?? 'no attempt'}); console: ${this.consoleTail()}`,
    );
  }

  consoleTail(n = 1500): string {
    try {
      return readFileSync(this.consoleLog, 'utf8').slice(-n);
    } catch {
      return '(no console log)';
    }
  }

  module(name: string) {
    return signModule(readProbeBundle(name), this.key);
  }

  /** Asks the guest's fault-injection helper for one fault; returns its answer line. */
  fault(cmd: string, timeoutMs = 20_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(this.testSocket);
      let buf = '';
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`fault helper did not answer "${cmd}" within ${timeoutMs} ms`));
      }, timeoutMs);
      s.on('connect', () => s.write(cmd + '\n'));
      s.on('data', (c) => {
        buf += c.toString();
        const nl = buf.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(t);
          s.destroy();
          const line = buf.slice(0, nl).trim();
          if (line.startsWith('err ')) reject(new Error(`fault helper: ${line}`));
          else resolve(line);
        }
      });
      s.on('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
  }

  async destroy(): Promise<void> {
    if (!this.defined) return;
    // Twice: after a libvirtd restart the first call only finds the connection dead (and
    // renews it); undefining then would leave the guest running as a transient domain.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.hv.destroy(this.name);
        break;
      } catch {
        const st = await this.hv.state(this.name).catch(() => null);
        if (st?.state === 'shut off') break; // not running; anything else: once more
      }
    }
    try {
      await this.hv.undefine(this.name);
    } catch {
      /* not defined */
    }
    this.defined = false;
  }

  /** Stops and undefines the guest, stops the event stream, removes the rig's files. */
  async stop(): Promise<void> {
    await this.destroy();
    await this.events?.stop();
    await this.hv?.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
