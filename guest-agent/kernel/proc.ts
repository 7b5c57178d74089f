// Small /proc look-ups the probes need (a sender's name, a victim's memory). Reads are
// synchronous: they are short, and doing them at once, while the task may still exist,
// is the point.
import { readFileSync } from 'node:fs';

const COMM_TTL_MS = 2000;
const COMM_CACHE_MAX = 4096;

export class ProcCache {
  private readonly comms = new Map<number, { comm: string; at: number }>();

  /** tracefs, whose saved_cmdlines remembers the names of tasks seen in events after they exit */
  constructor(private readonly tracefsPath = '') {}

  comm(pid: number): string {
    if (pid <= 0) return pid === 0 ? 'swapper' : '';
    const now = Date.now();
    const hit = this.comms.get(pid);
    if (hit && now - hit.at < COMM_TTL_MS) return hit.comm;
    let comm = '';
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trimEnd();
    } catch {
      // Gone already (a shell that sent a signal and exited): the kernel recorded the name
      // of every task that appeared in a traced event.
      comm = hit?.comm || this.savedCmdline(pid);
    }
    if (this.comms.size >= COMM_CACHE_MAX) this.comms.clear();
    this.comms.set(pid, { comm, at: now });
    return comm;
  }

  private savedCmdline(pid: number): string {
    if (!this.tracefsPath) return '';
    try {
      const text = readFileSync(`${this.tracefsPath}/saved_cmdlines`, 'utf8');
      return new RegExp(`^${pid} (.*)$`, 'm').exec(text)?.[1] ?? '';
    } catch {
      return '';
    }
  }

  /** Fields of /proc/<pid>/status (Tgid, VmRSS, ...); undefined when it is gone. */
  status(pid: number): Record<string, string> | undefined {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
      return undefined;
    }
    const out: Record<string, string> = {};
    for (const line of text.split('\n')) {
      const i = line.indexOf(':');
      if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
    }
    return out;
  }
}

/** CLOCK_MONOTONIC in ns as a number (process.hrtime uses CLOCK_MONOTONIC on Linux). */
export function monoNow(): number {
  return Number(process.hrtime.bigint());
}

/** Converts between the guest's monotonic and wall clocks; refreshed now and then against drift. */
export class WallClock {
  private offset = 0;
  private at = 0;

  private refresh(): void {
    const mono = monoNow();
    this.offset = (performance.timeOrigin + performance.now()) * 1e6 - mono;
    this.at = mono;
  }

  wallFromMono(mono: number): number {
    if (this.at === 0 || mono - this.at > 10e9) this.refresh();
    return Math.round(mono + this.offset);
  }

  now(): { mono: number; wall: number } {
    const mono = monoNow();
    return { mono, wall: this.wallFromMono(mono) };
  }
}
