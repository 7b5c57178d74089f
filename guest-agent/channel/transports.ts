// Where the agent's byte stream comes from. A transport hands the agent "links", one at a
// time: a connection on a unix socket (host mode and tests), the agent's own stdin/stdout
// (an SSH exec channel), or a virtio-serial port found by name. The agent speaks the same
// protocol on all of them.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { join } from 'node:path';

export interface Link {
  readonly stream: Duplex;
  readonly describe: string;
}

export interface Transport {
  readonly describe: string;
  /** Calls onLink for every new link; a new link replaces the previous one. */
  start(onLink: (l: Link) => void): Promise<void>;
  stop(): Promise<void>;
}

export class UnixListenTransport implements Transport {
  private server: net.Server | null = null;
  constructor(readonly path: string) {}
  get describe(): string {
    return `unix:${this.path}`;
  }
  start(onLink: (l: Link) => void): Promise<void> {
    try {
      fs.unlinkSync(this.path);
    } catch {
      /* not there */
    }
    return new Promise((resolve, reject) => {
      const srv = net.createServer((sock) => onLink({ stream: sock, describe: `unix:${this.path}` }));
      srv.once('error', reject);
      srv.listen(this.path, () => {
        fs.chmodSync(this.path, 0o600);
        srv.off('error', reject);
        resolve();
      });
      this.server = srv;
    });
  }
  stop(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
      try {
        fs.unlinkSync(this.path);
      } catch {
        /* gone */
      }
    });
  }
}

export class StdioTransport implements Transport {
  readonly describe = 'stdio';
  start(onLink: (l: Link) => void): Promise<void> {
    const stream = Duplex.from({ readable: process.stdin, writable: process.stdout });
    onLink({ stream, describe: 'stdio' });
    return Promise.resolve();
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
}

/** Finds /dev/vportNpM for a virtio-serial port name via /sys/class/virtio-ports (no udev needed). */
export function findVirtioPort(name: string, sysRoot = '/sys/class/virtio-ports'): string | null {
  let entries: string[];
  try {
    entries = fs.readdirSync(sysRoot);
  } catch {
    return null;
  }
  for (const e of entries) {
    try {
      if (fs.readFileSync(join(sysRoot, e, 'name'), 'utf8').trim() === name) return `/dev/${e}`;
    } catch {
      /* port without a name */
    }
  }
  return null;
}

/**
 * A virtio-serial port. The device stays open for the agent's life; the host connecting
 * to or leaving the other end does not close it, so each reopen after an error is a new link.
 */
export class VirtioPortTransport implements Transport {
  private stopped = false;
  private fd = -1;
  constructor(readonly portName: string) {}
  get describe(): string {
    return `virtio:${this.portName}`;
  }
  async start(onLink: (l: Link) => void): Promise<void> {
    const dev = findVirtioPort(this.portName);
    if (!dev) throw new Error(`no virtio-serial port named ${this.portName} under /sys/class/virtio-ports`);
    const open = (): void => {
      if (this.stopped) return;
      this.fd = fs.openSync(dev, fs.constants.O_RDWR);
      const rs = fs.createReadStream('', { fd: this.fd, autoClose: false, highWaterMark: 64 * 1024 });
      const ws = fs.createWriteStream('', { fd: this.fd, autoClose: false });
      const stream = Duplex.from({ readable: rs, writable: ws });
      stream.once('close', () => {
        try {
          fs.closeSync(this.fd);
        } catch {
          /* closed */
        }
        setTimeout(open, 200);
      });
      onLink({ stream, describe: `virtio:${this.portName} (${dev})` });
    };
    open();
  }
  stop(): Promise<void> {
    this.stopped = true;
    return Promise.resolve();
  }
}

export function parseTransport(spec: string): Transport {
  if (spec === 'stdio') return new StdioTransport();
  if (spec.startsWith('unix:')) return new UnixListenTransport(spec.slice(5));
  if (spec.startsWith('virtio:')) return new VirtioPortTransport(spec.slice(7));
  throw new Error(`unknown transport ${JSON.stringify(spec)}: use unix:PATH, stdio or virtio:PORT-NAME`);
}
