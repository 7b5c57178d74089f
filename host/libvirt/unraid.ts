// Hypervisor over @unraid/libvirt (an N-API binding, so it survives Node upgrades, unlike the
// old `libvirt` package) for the calls it has, and over `virsh` for the ones it lacks.
//
// The binding is loaded lazily: a host without the native addon (not built, or libvirt-dev was
// missing at `npm ci`) can still import this file, and gets VSP_LIBVIRT_UNAVAILABLE on first use
// with the fix in the message, instead of a crash at start-up.
//
// One connection, opened on first use. When a call fails in a way that means the daemon went
// away (libvirtd restarted), the connection is dropped so the next call reconnects.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Domain, Hypervisor as NativeHypervisor } from '@unraid/libvirt';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { isDiskLockRefusal } from './lock-refusal.js';
import type { DeviceChangeOptions, DomainInfo, DomainStateName, Hypervisor } from './hypervisor.js';

export interface UnraidHypervisorOptions {
  /** libvirt connection URI (default qemu:///system) */
  uri?: string;
  /** virsh binary for the calls the binding lacks (default: virsh from PATH) */
  virsh?: string;
  /** bound on each virsh call, ms (default 30 s: libvirt may probe QEMU on a cold cache, ~8 s) */
  virshTimeoutMs?: number;
}

// libvirt's virDomainState numbering (public ABI) to virsh's words.
const STATE_NAMES: readonly DomainStateName[] = [
  'no state',
  'running',
  'idle',
  'paused',
  'in shutdown',
  'shut off',
  'crashed',
  'pmsuspended',
];

// The binding rejects with libvirt's message only (no error number), so classify by message.
const NOT_FOUND = /Domain not found|failed to get domain/i;
const UNAVAILABLE =
  /Failed to connect socket|client socket is closed|Cannot (recv|write) data|End of file while reading|invalid connection pointer|Broken pipe|Connection reset|no connection driver|virsh timed out|spawn \S+ ENOENT/i;

/** Turns whatever libvirt, the binding or virsh threw into a VesperError with a stable code. */
export function libvirtError(what: string, err: unknown): VesperError {
  if (err instanceof VesperError) return err;
  const msg = (err as { message?: unknown })?.message;
  const text = (typeof msg === 'string' ? msg : String(err)).trim();
  const code = isDiskLockRefusal(text)
    ? ErrorCode.DISK_LOCKED
    : NOT_FOUND.test(text)
      ? ErrorCode.DOMAIN_NOT_FOUND
      : UNAVAILABLE.test(text)
        ? ErrorCode.LIBVIRT_UNAVAILABLE
        : ErrorCode.LIBVIRT_CALL;
  return new VesperError(code, `${what}: ${text}`, '', { cause: err });
}

export class UnraidHypervisor implements Hypervisor {
  readonly uri: string;
  private readonly virshBin: string;
  private readonly virshTimeoutMs: number;
  private conn: Promise<NativeHypervisor> | null = null;

  constructor(opts: UnraidHypervisorOptions = {}) {
    this.uri = opts.uri ?? 'qemu:///system';
    this.virshBin = opts.virsh ?? 'virsh';
    this.virshTimeoutMs = opts.virshTimeoutMs ?? 30_000;
  }

  /** Constructs and opens the connection now, so an unreachable libvirtd fails here, not later. */
  static async connect(uriOrOpts: string | UnraidHypervisorOptions = {}): Promise<UnraidHypervisor> {
    const hv = new UnraidHypervisor(typeof uriOrOpts === 'string' ? { uri: uriOrOpts } : uriOrOpts);
    await hv.connect();
    return hv;
  }

  async listDomains(): Promise<DomainInfo[]> {
    return this.call('list domains', async (h) => {
      const domains = await h.connectListAllDomains();
      return Promise.all(
        domains.map(async (d): Promise<DomainInfo> => {
          const [name, uuid, id, info] = await Promise.all([d.getName(), d.getUUIDString(), d.getID(), d.getInfo()]);
          return { name, uuid, id: id === null || id < 0 ? null : id, state: STATE_NAMES[info.state] ?? 'no state' };
        }),
      );
    });
  }

  async define(xml: string): Promise<string> {
    return this.call('define domain', async (h) => (await h.domainDefineXML(xml)).getName());
  }

  async start(name: string): Promise<void> {
    await this.onDomain('start', name, (d) => d.create());
  }

  // virsh: the binding's domainCreateXML takes no flags (no VIR_DOMAIN_START_PAUSED).
  async createPaused(xml: string): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'vesper-dom-'));
    try {
      const file = join(dir, 'domain.xml');
      await writeFile(file, xml, { mode: 0o600 });
      const name = /<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? 'a transient domain';
      await this.virsh(`start ${name} paused`, ['create', '--file', file, '--paused']);
      return name;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async resume(name: string): Promise<void> {
    await this.onDomain('resume', name, (d) => d.resume());
  }

  async destroy(name: string): Promise<void> {
    await this.onDomain('destroy', name, (d) => d.destroy());
  }

  async shutdown(name: string): Promise<void> {
    await this.onDomain('shutdown', name, (d) => d.shutdown());
  }

  async undefine(name: string): Promise<void> {
    await this.onDomain('undefine', name, (d) => d.undefine());
  }

  async xml(name: string): Promise<string> {
    return this.onDomain('get XML of', name, (d) => d.getXMLDesc());
  }

  // virsh: the persistent definition, not the live one (`dumpxml --inactive`); null for a
  // transient domain, which has none.
  async inactiveXml(name: string): Promise<string | null> {
    const info = await this.virsh(`info of ${name}`, ['dominfo', '--domain', name]);
    if (/^Persistent:\s+no\s*$/m.test(info)) return null;
    return this.virsh(`get the persistent XML of ${name}`, ['dumpxml', '--inactive', '--domain', name]);
  }

  // virsh: the binding has no virDomainReboot.
  async reboot(name: string): Promise<void> {
    await this.virsh(`reboot ${name}`, ['reboot', '--domain', name]);
  }

  // virsh: the binding's getInfo has the state but not the reason (no virDomainGetState).
  async state(name: string): Promise<{ state: string; reason: string }> {
    const out = (await this.virsh(`state of ${name}`, ['domstate', '--reason', '--domain', name])).trim();
    // "shut off (crashed)"; state words may contain spaces, the reason is the last (...) group.
    const m = /^(.*?)\s*\(([^()]*)\)$/.exec(out);
    return m ? { state: m[1] ?? out, reason: m[2] ?? '' } : { state: out, reason: '' };
  }

  // virsh: the binding has no virDomainAttachDeviceFlags / virDomainDetachDeviceFlags.
  async attachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void> {
    await this.deviceChange('attach-device', name, xml, opts);
  }

  async detachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void> {
    await this.deviceChange('detach-device', name, xml, opts);
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = null;
    if (!conn) return;
    try {
      await (await conn).connectClose();
    } catch {
      // never opened, or the daemon already went away: nothing left to close
    }
  }

  private connect(): Promise<NativeHypervisor> {
    if (this.conn) return this.conn;
    const conn = (async () => {
      let mod: typeof import('@unraid/libvirt');
      try {
        mod = await import('@unraid/libvirt');
      } catch (err) {
        throw new VesperError(
          ErrorCode.LIBVIRT_UNAVAILABLE,
          `cannot load @unraid/libvirt (native addon not built? needs libvirt-dev, then \`npm rebuild @unraid/libvirt\`): ${(err as Error).message}`,
          '',
          { cause: err },
        );
      }
      const h = new mod.Hypervisor({ uri: this.uri });
      try {
        await h.connectOpen();
      } catch (err) {
        const e = libvirtError(`connect to ${this.uri}`, err);
        // Whatever the message, failing to open the connection means libvirt is not usable.
        throw e.code === ErrorCode.LIBVIRT_UNAVAILABLE ? e : new VesperError(ErrorCode.LIBVIRT_UNAVAILABLE, e.message, '', { cause: err });
      }
      return h;
    })();
    this.conn = conn;
    // A failed open is not cached: the next call tries again.
    conn.catch(() => {
      if (this.conn === conn) this.conn = null;
    });
    return conn;
  }

  private async call<T>(what: string, fn: (h: NativeHypervisor) => Promise<T>): Promise<T> {
    const conn = this.connect();
    const h = await conn;
    try {
      return await fn(h);
    } catch (err) {
      const e = libvirtError(what, err);
      if (e.code === ErrorCode.LIBVIRT_UNAVAILABLE && this.conn === conn) this.conn = null; // reconnect next time
      throw e;
    }
  }

  private onDomain<T>(what: string, name: string, fn: (d: Domain) => Promise<T>): Promise<T> {
    return this.call(`${what} ${name}`, async (h) => fn(await h.domainLookupByName(name)));
  }

  private async deviceChange(cmd: 'attach-device' | 'detach-device', name: string, xml: string, opts: DeviceChangeOptions): Promise<void> {
    // virsh reads the device XML from a file; a private temp dir keeps it away from other users.
    const dir = await mkdtemp(join(tmpdir(), 'vesper-dev-'));
    try {
      const file = join(dir, 'device.xml');
      await writeFile(file, xml, { mode: 0o600 });
      const flags = [...(opts.live ? ['--live'] : []), ...(opts.config ? ['--config'] : [])];
      await this.virsh(`${cmd} ${name}`, [cmd, '--domain', name, '--file', file, ...(flags.length ? flags : ['--current'])]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Runs one virsh command, bounded; resolves with stdout, rejects with a classified VesperError. */
  private virsh(what: string, args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        this.virshBin,
        ['-c', this.uri, ...args],
        // LC_ALL=C: the output and error texts parsed here are the untranslated ones.
        { timeout: this.virshTimeoutMs, killSignal: 'SIGKILL', env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          if (!err) return resolve(stdout);
          const timedOut = (err as { killed?: boolean }).killed === true;
          const text = timedOut
            ? `virsh timed out after ${this.virshTimeoutMs} ms`
            : stderr.replace(/^error: /gm, '').trim() || err.message;
          reject(libvirtError(what, new Error(text.replace(/\n+/g, '; '), { cause: err })));
        },
      );
    });
  }
}
