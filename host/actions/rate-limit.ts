// ActionRateLimiter: at most `max` actions per VM in any window of `windowMs` (a sliding window
// over the times of the actions it allowed). A VM that keeps failing must not be restarted in a
// tight loop, nor a script run for every event of a storm; what is refused here becomes a
// VSP_ACTION_RATE_LIMITED result, so the refusal is visible rather than silent.

export interface RateLimitOptions {
  /** actions allowed per VM per window (default 3) */
  max?: number;
  /** the window, ms (default 10 min) */
  windowMs?: number;
}

export const DEFAULT_RATE_MAX = 3;
export const DEFAULT_RATE_WINDOW_MS = 10 * 60_000;

export class ActionRateLimiter {
  readonly max: number;
  readonly windowMs: number;
  /** per VM: times (ms) of the allowed actions still inside the window, oldest first */
  private readonly recent = new Map<string, number[]>();
  private readonly refusedPerVm = new Map<string, number>();
  private refusedTotal = 0;

  constructor(o: RateLimitOptions = {}) {
    this.max = o.max ?? DEFAULT_RATE_MAX;
    this.windowMs = o.windowMs ?? DEFAULT_RATE_WINDOW_MS;
    if (!Number.isInteger(this.max) || this.max < 1) throw new RangeError(`rate limit max must be an integer >= 1, got ${this.max}`);
    if (!(this.windowMs > 0)) throw new RangeError(`rate limit window must be > 0 ms, got ${this.windowMs}`);
  }

  /** Whether one more action for `vm` may run now; an allowed one is counted. */
  allow(vm: string, now: number = Date.now()): boolean {
    const times = this.prune(vm, now);
    if (times.length >= this.max) {
      this.refusedTotal++;
      this.refusedPerVm.set(vm, (this.refusedPerVm.get(vm) ?? 0) + 1);
      return false;
    }
    times.push(now);
    this.recent.set(vm, times);
    return true;
  }

  /** When the next action for `vm` would be allowed (now, if it would be). */
  nextAllowedAt(vm: string, now: number = Date.now()): number {
    const times = this.prune(vm, now);
    return times.length < this.max ? now : times[times.length - this.max]! + this.windowMs;
  }

  /** Actions refused so far, for one VM or for all. */
  refused(vm?: string): number {
    return vm === undefined ? this.refusedTotal : (this.refusedPerVm.get(vm) ?? 0);
  }

  private prune(vm: string, now: number): number[] {
    const times = this.recent.get(vm);
    if (!times) return [];
    let drop = 0;
    while (drop < times.length && times[drop]! <= now - this.windowMs) drop++;
    if (drop) times.splice(0, drop);
    if (!times.length) this.recent.delete(vm); // VMs come and go: keep no empty entries
    return times;
  }
}
