// vesperd's connection to libvirt, optional: a host without libvirt (every VM an SSH target on
// another hypervisor or a cloud) must still run vesperd. The first attempt is made at start; if
// libvirt is not there, vesperd says so once (VSP_LIBVIRT_UNAVAILABLE, a warning, with what
// still works) and tries again in the background with a growing interval, and says when it has
// it. Until then libvirt's domains are unknown, SSH targets are managed as usual, and actions
// that need libvirt (restart, failover) fail with VSP_LIBVIRT_UNAVAILABLE.
import type { Logger } from 'pino';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';

export interface LibvirtConnectionOptions {
  uri: string;
  log: Logger;
  connect: (uri: string) => Promise<Hypervisor>;
  /** told once, when a connection is made (at start or later) */
  onConnected: (hv: Hypervisor) => Promise<void> | void;
  /** the first retry after this long (ms, default 2,000), doubling up to maxRetryMs (default 60,000) */
  minRetryMs?: number;
  maxRetryMs?: number;
}

export class LibvirtConnection {
  hv: Hypervisor | null = null;
  /** why the last attempt failed (null once connected) */
  lastError: VesperError | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private wait: number;

  constructor(private readonly o: LibvirtConnectionOptions) {
    this.wait = o.minRetryMs ?? 2000;
  }

  /** One attempt now; resolves either way (with the connection's onConnected done when it worked). */
  async start(): Promise<void> {
    await this.attempt(true);
  }

  /** The hypervisor, or VSP_LIBVIRT_UNAVAILABLE saying why there is none. */
  get(): Promise<Hypervisor> {
    if (this.hv) return Promise.resolve(this.hv);
    return Promise.reject(
      new VesperError(
        ErrorCode.LIBVIRT_UNAVAILABLE,
        `no connection to libvirt at ${this.o.uri}${this.lastError ? ` (${this.lastError.message})` : ''}; vesperd retries in the background`,
      ),
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.hv?.close().catch(() => undefined);
  }

  private async attempt(first: boolean): Promise<void> {
    if (this.stopped) return;
    let hv: Hypervisor;
    try {
      hv = await this.o.connect(this.o.uri);
    } catch (err) {
      const e = VesperError.from(err, ErrorCode.LIBVIRT_UNAVAILABLE);
      const changed = this.lastError?.message !== e.message;
      this.lastError = e;
      if (first)
        this.o.log.warn(
          { uri: this.o.uri, code: ErrorCode.LIBVIRT_UNAVAILABLE, err: e.message },
          'libvirt is not available: vesperd runs without it (SSH targets are managed; libvirt domains, events and actions wait), and retries in the background',
        );
      else if (changed) this.o.log.warn({ uri: this.o.uri, code: e.code, err: e.message }, 'libvirt still not available');
      this.schedule();
      return;
    }
    if (this.stopped) {
      await hv.close().catch(() => undefined);
      return;
    }
    this.hv = hv;
    if (!first) this.o.log.info({ uri: this.o.uri }, 'libvirt connected');
    this.lastError = null;
    await this.o.onConnected(hv);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.attempt(false);
    }, this.wait);
    this.timer.unref();
    this.wait = Math.min(this.wait * 2, this.o.maxRetryMs ?? 60_000);
  }
}
