// Pressure stall information. The kernel's own PSI triggers report through poll(POLLPRI),
// which Node cannot wait on without a native addon; until the agent has one, the watcher
// samples the same `total` stall counter the trigger uses and applies the trigger's rule:
// fire when stalled time within the sliding window reaches the threshold, at most once per
// window. One read of a small file per sample.
import { readFileSync, existsSync } from 'node:fs';
import type { PsiSample } from '../../contract/probe-api.js';
import { monoNow } from './proc.js';

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
  readonly sampleMs: number;

  constructor(
    readonly file: string,
    readonly resource: string,
    readonly kind: 'some' | 'full',
    readonly thresholdUs: number,
    readonly windowUs: number,
    private readonly onFire: (s: PsiSample) => void,
  ) {
    this.sampleMs = Math.max(50, Math.min(500, Math.round(windowUs / 1000 / 10)));
  }

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.sampleMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private sample(): void {
    const r = readPressure(this.file, this.kind);
    if (!r) return;
    const t = monoNow() / 1000; // µs
    this.samples.push({ t, total: r.total });
    while (this.samples.length > 2 && this.samples[1]!.t <= t - this.windowUs) this.samples.shift();
    const first = this.samples[0]!;
    const stall = r.total - first.total;
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
