/**
 * What a probe reads from /proc about a pid, kept for `ttlNs` of the trace clock the probe is
 * handed (event timestamps, not the wall clock) and cleared whole at `max` entries: a storm of
 * events naming the same few pids costs one read per pid a second, not one per event. A pid
 * reused within the time to live is the only way to get a stale answer.
 */
export class TtlCache<V> {
  private readonly entries = new Map<number, { ts: number; value: V }>();

  constructor(
    private readonly ttlNs: number,
    private readonly max: number,
    /** reads the value of a pid (made once, not per call: no closure per event) */
    private readonly read: (pid: number) => V,
  ) {}

  get(pid: number, ts: number): V {
    const hit = this.entries.get(pid);
    if (hit !== undefined && ts - hit.ts < this.ttlNs) return hit.value;
    const value = this.read(pid);
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(pid, { ts, value });
    return value;
  }
}
