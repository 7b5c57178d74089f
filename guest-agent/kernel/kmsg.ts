// The kernel log (/dev/kmsg), read as it is written. The OOM killer's report ("Killed
// process ... total-vm ... anon-rss ...", "oom-kill:constraint=... oom_memcg=...") lives
// here on kernels whose oom/mark_victim event carries only the pid.
import * as fs from 'node:fs';
import type { KmsgLine } from '../../contract/probe-api.js';
import { monoNow } from './proc.js';

export function parseKmsg(raw: string): KmsgLine | null {
  const semi = raw.indexOf(';');
  if (semi < 0) return null;
  const [pri, seq, tsUs] = raw.slice(0, semi).split(',');
  if (pri === undefined || seq === undefined || tsUs === undefined) return null;
  const body = raw.slice(semi + 1);
  const nl = body.indexOf('\n');
  return { level: Number(pri) & 7, seq: Number(seq), ts: Number(tsUs) * 1000, text: nl < 0 ? body : body.slice(0, nl) };
}

export class KmsgSource {
  private fd = -1;
  private readonly subs = new Set<(l: KmsgLine) => void>();
  private stopping = false;
  private done: Promise<void> | null = null;
  private startTs = 0;

  get available(): boolean {
    try {
      fs.accessSync('/dev/kmsg', fs.constants.R_OK);
      return true;
    } catch {
      return false;
    }
  }

  subscribe(fn: (l: KmsgLine) => void): () => Promise<void> {
    this.subs.add(fn);
    if (this.fd < 0) this.start();
    return async () => {
      this.subs.delete(fn);
      if (this.subs.size === 0) await this.stop();
    };
  }

  private start(): void {
    this.fd = fs.openSync('/dev/kmsg', 'r');
    this.stopping = false;
    const buf = Buffer.alloc(8192);
    const fd = this.fd;
    // A new reader starts at the oldest line the kernel still holds. Skip that history at
    // once: write a line of our own and read synchronously up to it, so that the first
    // asynchronous read already waits for new lines (a backlog read one thread-pool hop at a
    // time would lag behind the events we need it for).
    const nonce = `vesper-agent: kernel log reader ${process.pid}.${monoNow()} started`;
    this.startTs = 0;
    try {
      fs.writeFileSync('/dev/kmsg', nonce + '\n');
      for (let i = 0; i < 1_000_000; i++) {
        let n: number;
        try {
          n = fs.readSync(fd, buf, 0, buf.length, null);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EPIPE') continue;
          throw err;
        }
        if (buf.toString('utf8', 0, n).includes(nonce)) break;
      }
    } catch {
      // Cannot write to the log: fall back to skipping lines older than now.
      this.startTs = monoNow() - 1e6;
    }
    this.done = new Promise<void>((resolve) => {
      const step = (): void =>
        fs.read(fd, buf, 0, buf.length, null, (err, n) => {
          if (this.stopping) {
            fs.close(fd, () => resolve());
            return;
          }
          // EPIPE: lines were overwritten before we read them; carry on with the next.
          if (!err && n > 0) {
            const line = parseKmsg(buf.toString('utf8', 0, n));
            if (line && line.ts >= this.startTs) for (const s of this.subs) s(line);
          } else if (err && err.code !== 'EPIPE') {
            setTimeout(step, 200);
            return;
          }
          step();
        });
      step();
    });
  }

  async stop(): Promise<void> {
    if (this.fd < 0) return;
    this.stopping = true;
    this.fd = -1;
    // A blocked reader wakes on the next line; write one.
    try {
      fs.writeFileSync('/dev/kmsg', 'vesper-agent: kernel log reader stopped\n');
    } catch {
      /* nothing to wake then */
    }
    await Promise.race([this.done, new Promise((r) => setTimeout(r, 2000).unref())]);
  }
}
