// The probes' per-pid /proc cache (probes/_shared/ttl-cache.ts): one read per pid per time to
// live on the trace clock, whatever the number of events; cleared whole when full.
import { describe, expect, it } from 'vitest';
import { TtlCache } from '../../probes/_shared/ttl-cache.js';

describe('TtlCache', () => {
  it('reads a pid once within its time to live, again after it, and each pid on its own', () => {
    const reads: number[] = [];
    const c = new TtlCache<string>(1e9, 10, (pid) => {
      reads.push(pid);
      return `comm-${pid}-${reads.length}`;
    });
    expect(c.get(7, 0)).toBe('comm-7-1');
    expect(c.get(7, 999_999_999)).toBe('comm-7-1');
    expect(c.get(8, 5)).toBe('comm-8-2');
    expect(c.get(7, 1e9)).toBe('comm-7-3');
    expect(reads).toEqual([7, 8, 7]);
  });

  it('is cleared whole at its bound, so a pid storm never grows it without end', () => {
    let n = 0;
    const c = new TtlCache<number>(1e9, 3, () => ++n);
    for (const pid of [1, 2, 3]) c.get(pid, 0);
    expect(c.get(1, 1)).toBe(1); // still held
    c.get(4, 1); // the fourth clears the three
    expect(c.get(1, 2)).toBe(5);
  });
});
