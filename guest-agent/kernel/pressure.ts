// Pressure stall information. The kernel's own PSI triggers report through poll(POLLPRI),
// which Node cannot wait on without a native addon; until the agent has one, the watcher
// samples the same `total` stall counter the trigger uses and applies the trigger's rule:
// fire when stalled time within the sliding window reaches the threshold, at most once per
// window. One read of a small file per sample.
//
// Sampled at window/10 (as the kernel polls a trigger) only while stall time is in the
// window. While the counter stands still, one sample per idle period (the window, at most
// 1 s, on the agent's shared 1 s tick: ticker.ts): an idle guest's agent woke ten times a
// second for this alone. The first idle sample that sees the counter move goes back to
// window/10. The cost: a stall that starts just after an idle sample is seen up to one idle
// period later (at the defaults, 100 ms in a 1 s window, a pressure report can come up to
// 0.9 s later than the kernel's trigger would; a longer stall is unaffected once sampling is
// fast).
import { readFileSync, existsSync } from 'node:fs';
import type { PsiSample } from '../../contract/probe-api.js';
import { monoNow } from './proc.js';
import { onTick } from './ticker.js';

/** the longest idle sampling period */
const IDLE_MAX_MS = 1000;

export function pressureFile(resource: string, cgroup?: string): string {
  return cgroup ? `${cgroup.replace(/\/$/, '')}/${resource}.pressure` : `/proc/pressure/${resource}`;
}

export function psiAvailable(): boolean {
  return existsSync('/proc/pressure/memory');
}

export function readPressure(file: string, kind: 'some' | 'full'): { total: number; avg10: number } | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const line = text.split('\n').find((l) => l.startsWith(kind + ' '));
  if (!line) return null;
  const total = Number(/total=(\d+)/.exec(line)?.[1]);
  const avg10 = Number(/avg10=([\d.]+)/.exec(line)?.[1]);
  return Number.isFinite(total) ? { total, avg10 } : null;
}

export class PressureWatcher {
  private readonly samples: { t: number; total: number }[] = [];
  private lastFire = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  private offTick: (() => void) | null = null;
  private running = false;
  readonly sampleMs: number;
  readonly idleMs: number;

  constructor(
    readonly file: string,
    readonly resource: string,
    readonly kind: 'some' | 'full',
    readonly thresholdUs: number,
    readonly windowUs: number,
    private readonly onFire: (s: PsiSample) => void,
  ) {
    this.sampleMs = Math.max(50, Math.min(500, Math.round(windowUs / 1000 / 10)));
    this.idleMs = Math.max(this.sampleMs, Math.min(IDLE_MAX_MS, Math.round(windowUs / 1000)));
  }

  start(): void {
    this.running = true;
    this.sample();
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.offTick?.();
    this.offTick = null;
  }

  /** true while the counter moved within the window: sampled at window/10 */
  get fast(): boolean {
    return this.timer !== null;
  }

  /** The next sample: soon while there is stall time in the window, on the idle tick otherwise. */
  private schedule(busy: boolean): void {
    if (!this.running) return;
    if (busy) {
      this.offTick?.();
      this.offTick = null;
      this.timer = setTimeout(() => {
        this.timer = null;
        this.sample();
      }, this.sampleMs);
    } else if (!this.offTick) this.offTick = onTick(this.idleMs, () => this.sample());
  }

  private sample(): void {
    const r = readPressure(this.file, this.kind);
    if (!r) {
      this.schedule(false);
      return;
    }
    const t = monoNow() / 1000; // µs
    this.samples.push({ t, total: r.total });
    while (this.samples.length > 2 && this.samples[1]!.t <= t - this.windowUs) this.samples.shift();
    const first = this.samples[0]!;
    const stall = r.total - first.total;
    this.schedule(stall > 0);
    if (stall >= this.thresholdUs && t - this.lastFire >= this.windowUs) {
      this.lastFire = t;
      this.onFire({
        resource: this.resource,
        kind: this.kind,
        stallUs: stall,
        windowUs: this.windowUs,
        thresholdUs: this.thresholdUs,
        avg10: r.avg10,
        source: this.file,
      });
    }
  }
}
