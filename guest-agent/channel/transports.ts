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
 * A virtio-serial port. The guest cannot see the host side connect: while nobody holds the
 * host end, read() returns 0 at once and write() blocks. So the transport reads until bytes
 * arrive (the host speaks first on this transport; see AgentClient), makes that a link,
 * and goes back to waiting when a read returns 0 again (the host went away). Waiting is one
 * read() every 250 ms, and only while no host is there.
 */
export class VirtioPortTransport implements Transport {
  private stopped = false;
  private fd = -1;
  private timer: NodeJS.Timeout | null = null;
  constructor(
    readonly portName: string,
    private readonly idleMs = 250,
  ) {}
  get describe(): string {
    return `virtio:${this.portName}`;
  }
  async start(onLink: (l: Link) => void): Promise<void> {
    const buf = Buffer.alloc(64 * 1024);
    let dev = '';
    // The port may not exist yet (a channel hot-plugged later, the "activate" step) or may
    // go away (hot-unplug): look it up by name again whenever the device fails.
    const open = (): void => {
      if (this.stopped) return;
      dev = findVirtioPort(this.portName) ?? '';
      try {
        if (!dev) throw new Error('not there');
        this.fd = fs.openSync(dev, fs.constants.O_RDWR);
      } catch {
        this.timer = setTimeout(open, 1000);
        return;
      }
      wait();
    };
    const reopen = (): void => {
      try {
        fs.closeSync(this.fd);
      } catch {
        /* already closed */
      }
      this.fd = -1;
      this.timer = setTimeout(open, 1000);
    };
    const wait = (): void => {
      if (this.stopped) return;
      fs.read(this.fd, buf, 0, buf.length, null, (err, n) => {
        if (this.stopped) return;
        if (err) return reopen();
        if (n === 0) {
          this.timer = setTimeout(wait, this.idleMs);
          return;
        }
        const link = new PortLink(this.fd, Buffer.from(buf.subarray(0, n)));
        link.once('close', () => (link.failed ? reopen() : wait()));
        onLink({ stream: link, describe: `virtio:${this.portName} (${dev})` });
      });
    };
    open();
  }
  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    return Promise.resolve();
  }
}

/** One host connection on an open virtio-serial port; ends when a read returns 0. */
class PortLink extends Duplex {
  private reading = false;
  private ended = false;
  /** the device failed (unplugged), rather than the host leaving */
  failed = false;
  private readonly buf = Buffer.alloc(64 * 1024);
  constructor(
    private readonly fd: number,
    first: Buffer,
  ) {
    super();
    this.push(first);
  }
  override _read(): void {
    if (this.reading || this.ended) return;
    this.reading = true;
    fs.read(this.fd, this.buf, 0, this.buf.length, null, (err, n) => {
      this.reading = false;
      if (this.ended) return;
      if (err || n === 0) {
        this.failed = Boolean(err);
        this.push(null); // the host went away, or the port did
        this.destroy();
        return;
      }
      if (this.push(Buffer.from(this.buf.subarray(0, n)))) this._read();
    });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const writeAll = (off: number): void => {
      fs.write(this.fd, chunk, off, chunk.length - off, null, (err, n) => {
        if (err) return cb(err);
        if (off + n < chunk.length) return writeAll(off + n);
        cb();
      });
    };
    writeAll(0);
  }
  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.ended = true; // the port itself stays open for the next host
    cb(err);
  }
}

export function parseTransport(spec: string): Transport {
  if (spec === 'stdio') return new StdioTransport();
  if (spec.startsWith('unix:')) return new UnixListenTransport(spec.slice(5));
  if (spec.startsWith('virtio:')) return new VirtioPortTransport(spec.slice(7));
  throw new Error(`unknown transport ${JSON.stringify(spec)}: use unix:PATH, stdio or virtio:PORT-NAME`);
}
