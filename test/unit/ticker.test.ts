// The agent's shared tick (guest-agent/kernel/ticker.ts): one timer per period, and no wake-up
// of its own while the main thread is woken anyway (poke).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { onTick, poke } from '../../guest-agent/kernel/ticker.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('onTick and poke', () => {
  it('runs what shares a period together; a poke runs it past half its period, and starts its period over either way', () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
    const runs: string[] = [];
    const offA = onTick(1000, () => runs.push('a'));
    const offB = onTick(1000, () => runs.push('b'));
    vi.advanceTimersByTime(1000);
    expect(runs).toEqual(['a', 'b']);
    vi.advanceTimersByTime(400);
    poke(); // not half-way: nothing now, and the timer starts over (the tick falls into step)
    expect(runs).toHaveLength(2);
    vi.advanceTimersByTime(999);
    expect(runs).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(runs).toEqual(['a', 'b', 'a', 'b']);
    vi.advanceTimersByTime(600);
    poke(); // 600 ms in: runs now
    expect(runs).toHaveLength(6);
    vi.advanceTimersByTime(999); // the timer started over at the poke
    expect(runs).toHaveLength(6);
    vi.advanceTimersByTime(1);
    expect(runs).toHaveLength(8);
    // In step with a poke every period (a heartbeat), the timer never fires by itself.
    for (let i = 0; i < 5; i++) {
      vi.advanceTimersByTime(990);
      poke();
    }
    expect(runs).toHaveLength(18);
    offA();
    offB();
    vi.advanceTimersByTime(5000);
    poke();
    expect(runs).toHaveLength(18);
  });
});
