import { describe, expect, it } from 'vitest';
import type { VesperEvent } from '../../host/notify/event.js';
import { DEFAULT_QUEUE_CAPACITY, EventQueue, type Subscription } from '../../host/notify/queue.js';

const ev = (n: number, plugin = 'signal'): VesperEvent => ({
  vm: 'vm1',
  plugin,
  instance: 0,
  event: 'e',
  guestTimeUs: null,
  hostTimeUs: n,
  source: null,
  payload: { n },
});

const ns = (events: VesperEvent[]): number[] => events.map((e) => e.payload['n'] as number);

function publish(q: EventQueue, from: number, to: number, plugin?: string): void {
  for (let n = from; n <= to; n++) q.publish(ev(n, plugin));
}

/** After the queue's coalesced wake-up (setImmediate) has run. */
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('EventQueue cursors', () => {
  it('numbers events by position and holds at most its capacity', () => {
    const q = new EventQueue({ capacity: 4 });
    expect(q.publish(ev(1))).toBe(0);
    expect(q.publish(ev(2))).toBe(1);
    publish(q, 3, 10);
    expect(q.published).toBe(10);
    expect(q.oldest).toBe(6);
    expect(q.size).toBe(4);
    expect(new EventQueue().capacity).toBe(DEFAULT_QUEUE_CAPACITY);
    expect(() => new EventQueue({ capacity: 0 })).toThrow(RangeError);
  });

  it('two subscribers at different speeds each get every event once, in order', () => {
    const q = new EventQueue({ capacity: 100 });
    const fast = q.subscribe();
    const slow = q.subscribe();
    const gotFast: number[] = [];
    const gotSlow: number[] = [];
    let n = 0;
    for (let round = 0; round < 10; round++) {
      publish(q, n + 1, n + 7);
      n += 7;
      const f = fast.take();
      expect(f.missed).toBe(0);
      gotFast.push(...ns(f.events));
      const s = slow.take(3); // reads less than arrives
      expect(s.missed).toBe(0);
      gotSlow.push(...ns(s.events));
    }
    expect(gotFast).toEqual(Array.from({ length: 70 }, (_, i) => i + 1));
    expect(gotSlow).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(slow.pending).toBe(40);
    gotSlow.push(...ns(slow.take().events));
    expect(gotSlow).toEqual(gotFast);
    expect(fast.delivered).toBe(70);
    expect(slow.delivered).toBe(70);
  });

  it('a subscriber that never reads loses exactly the overwritten events, is told once, and the count resets', () => {
    const q = new EventQueue({ capacity: 8 });
    const idle = q.subscribe();
    const reader = q.subscribe();
    publish(q, 1, 5);
    expect(ns(reader.take().events)).toEqual([1, 2, 3, 4, 5]);
    publish(q, 6, 30);
    // idle: 30 published, 8 held, so 22 lost; reader had taken 5, so 30 - 8 - 5 = 17 lost.
    const a = idle.take();
    expect(a.missed).toBe(22);
    expect(ns(a.events)).toEqual([23, 24, 25, 26, 27, 28, 29, 30]);
    const b = reader.take();
    expect(b.missed).toBe(17);
    expect(ns(b.events)).toEqual([23, 24, 25, 26, 27, 28, 29, 30]);
    // told once
    expect(idle.take()).toEqual({ events: [], missed: 0 });
    publish(q, 31, 33);
    expect(idle.take()).toEqual({ events: [ev(31), ev(32), ev(33)], missed: 0 });
    // falls behind again: a new count, added to the total
    publish(q, 34, 43);
    const c = idle.take(3);
    expect(c.missed).toBe(2);
    expect(ns(c.events)).toEqual([36, 37, 38]);
    expect(idle.missedTotal).toBe(24);
    expect(reader.missedTotal).toBe(17);
    expect(idle.delivered).toBe(8 + 3 + 3);
  });

  it('a subscriber exactly one ring behind loses nothing', () => {
    const q = new EventQueue({ capacity: 8 });
    const s = q.subscribe();
    publish(q, 1, 8);
    expect(s.take()).toMatchObject({ missed: 0 });
    publish(q, 9, 16);
    const r = s.take();
    expect(r.missed).toBe(0);
    expect(ns(r.events)).toEqual([9, 10, 11, 12, 13, 14, 15, 16]);
  });

  it('fromStart begins at the oldest event held; otherwise at the next one published', () => {
    const q = new EventQueue({ capacity: 8 });
    publish(q, 1, 5);
    const all = q.subscribe({ fromStart: true });
    const next = q.subscribe();
    expect(ns(all.take().events)).toEqual([1, 2, 3, 4, 5]);
    expect(next.take().events).toEqual([]);
    publish(q, 6, 12);
    const late = q.subscribe({ fromStart: true });
    expect(late.take()).toEqual({ events: [5, 6, 7, 8, 9, 10, 11, 12].map((n) => ev(n)), missed: 0 });
    expect(ns(next.take().events)).toEqual([6, 7, 8, 9, 10, 11, 12]);
  });

  it('match hands out only matching events, skipping the others, and max counts what it hands out', () => {
    const q = new EventQueue();
    const oom = q.subscribe({ match: (e) => e.plugin === 'oom' });
    for (let n = 1; n <= 12; n++) q.publish(ev(n, n % 3 === 0 ? 'oom' : 'signal'));
    expect(ns(oom.take(2).events)).toEqual([3, 6]);
    expect(ns(oom.take().events)).toEqual([9, 12]);
    expect(oom.take().events).toEqual([]);
    expect(oom.pending).toBe(0);
    expect(oom.delivered).toBe(4);
  });

  it('close() ends a subscription: nothing more to take, no more wake-ups', async () => {
    const q = new EventQueue();
    const s = q.subscribe();
    let calls = 0;
    s.onReadable(() => calls++);
    expect(q.subscribers).toBe(1);
    s.close();
    s.close();
    expect(s.closed).toBe(true);
    expect(q.subscribers).toBe(0);
    publish(q, 1, 3);
    await tick();
    expect(calls).toBe(0);
    expect(s.take()).toEqual({ events: [], missed: 0 });
    expect(s.pending).toBe(0);
  });
});

describe('EventQueue wake-ups', () => {
  it('calls onReadable once per publish burst, after the burst', async () => {
    const q = new EventQueue();
    const s = q.subscribe();
    let calls = 0;
    let seenAtCall = 0;
    s.onReadable(() => {
      calls++;
      seenAtCall = s.pending;
    });
    publish(q, 1, 100);
    expect(calls).toBe(0); // never from inside publish
    await tick();
    expect(calls).toBe(1);
    expect(seenAtCall).toBe(100);
    // Not taken: not called again, however much arrives.
    publish(q, 101, 200);
    await tick();
    expect(calls).toBe(1);
    // Taking everything re-arms it for the next burst.
    expect(s.take().events).toHaveLength(200);
    await tick();
    expect(calls).toBe(1);
    publish(q, 201, 201);
    await tick();
    expect(calls).toBe(2);
  });

  it('a take that leaves events behind is followed by another call, so small bites never stall', async () => {
    const q = new EventQueue();
    const s = q.subscribe();
    const got: number[] = [];
    s.onReadable(() => got.push(...ns(s.take(4).events)));
    publish(q, 1, 10);
    for (let i = 0; i < 5; i++) await tick();
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  it('registering onReadable while events wait calls it', async () => {
    const q = new EventQueue();
    const s = q.subscribe();
    publish(q, 1, 2);
    let calls = 0;
    s.onReadable(() => calls++);
    await tick();
    expect(calls).toBe(1);
    s.take();
    s.onReadable(null);
    publish(q, 3, 3);
    await tick();
    expect(calls).toBe(1);
  });

  it('a callback that throws is reported and does not keep others from their wake-up', async () => {
    const errors: unknown[] = [];
    const q = new EventQueue({ onCallbackError: (e) => errors.push(e) });
    const bad = q.subscribe();
    const good = q.subscribe();
    bad.onReadable(() => {
      throw new Error('boom');
    });
    let goodCalls = 0;
    good.onReadable(() => goodCalls++);
    publish(q, 1, 1);
    await tick();
    expect(goodCalls).toBe(1);
    expect(errors).toHaveLength(1);
    expect((errors[0] as Error).message).toBe('boom');
  });

  it('publishing with 1,000 idle subscribers does no per-subscriber work', async () => {
    const q = new EventQueue({ capacity: 1024 });
    let matchCalls = 0;
    const idle: Subscription[] = [];
    for (let i = 0; i < 1000; i++)
      idle.push(
        q.subscribe({
          match: () => {
            matchCalls++;
            return true;
          },
        }),
      );
    // Subscribers without callbacks: the queue never visits them.
    for (let burst = 0; burst < 10; burst++) {
      publish(q, burst * 1000 + 1, burst * 1000 + 1000);
      await tick();
    }
    expect(q.wakeVisits).toBe(0);
    expect(matchCalls).toBe(0);

    // Subscribers with callbacks that never read: each woken once, then never visited again.
    let idleCalls = 0;
    for (const s of idle) s.onReadable(() => idleCalls++);
    await tick();
    expect(idleCalls).toBe(1000);
    const visitsAfterFirst = q.wakeVisits;
    expect(visitsAfterFirst).toBe(1000);

    // One live reader among them: each burst costs one visit, its own.
    const live = q.subscribe();
    let liveGot = 0;
    live.onReadable(() => (liveGot += live.take().events.length));
    for (let burst = 0; burst < 10; burst++) {
      publish(q, 1, 500);
      await tick();
    }
    expect(liveGot).toBe(5000);
    expect(idleCalls).toBe(1000);
    expect(q.wakeVisits - visitsAfterFirst).toBe(10);
    expect(matchCalls).toBe(0);

    // The idle ones lost what the ring overwrote, and say so when they finally read.
    const r = idle[0]!.take();
    expect(r.missed).toBe(q.published - 1024);
    expect(r.events).toHaveLength(1024);
    expect(matchCalls).toBe(1024);
  });
});
