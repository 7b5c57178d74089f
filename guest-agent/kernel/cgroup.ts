// cgroup v2 memory.events: the kernel notifies watchers of the file (inotify) whenever a
// counter moves (high, max, oom, oom_kill, ...); we report the deltas.
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';

export function readFlatKeyed(file: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined) out[k] = Number(v);
  }
  return out;
}

export class MemoryEventsWatcher {
  private watcher: FSWatcher | null = null;
  private last: Record<string, number> = {};
  readonly file: string;

  constructor(
    cgroupPath: string,
    private readonly onDelta: (d: Record<string, number>) => void,
  ) {
    this.file = join(cgroupPath, 'memory.events');
  }

  start(): void {
    this.last = readFlatKeyed(this.file);
    this.watcher = watch(this.file, () => this.check());
  }

  check(): void {
    let now: Record<string, number>;
    try {
      now = readFlatKeyed(this.file);
    } catch {
      return;
    }
    const delta: Record<string, number> = {};
    let any = false;
    for (const [k, v] of Object.entries(now)) {
      const d = v - (this.last[k] ?? 0);
      if (d !== 0) {
        delta[k] = d;
        any = true;
      }
    }
    this.last = now;
    if (any) this.onDelta(delta);
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = null;
  }
}
