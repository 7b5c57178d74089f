// Read coalescing (host/channel/read-pacer.ts): a turn that read from many links is stretched to
// the window, one that read from few never is, and what the turn published reaches subscribers
// before the pause, not after it.
import { describe, expect, it } from 'vitest';
import { ReadPacer } from '../../host/channel/read-pacer.js';
import { COMMIT_AFTER_MS, IngestBatcher } from '../../host/daemon/ingest.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { NotificationFramework } from '../../host/notify/framework.js';
import { EventQueue } from '../../host/notify/queue.js';

const ev = (n: number): VesperEvent => ({
  vm: 'vm1',
  plugin: 'signal',
  instance: 0,
  event: 'signal',
  guestTimeUs: null,
  hostTimeUs: n,
  source: null,
  payload: { n },
});

function reads(p: ReadPacer, n: number): void {
  for (let i = 0; i < n; i++) p.noteRead();
}

describe('ReadPacer', () => {
  it('stretches a turn that read from many links to the window, counting from the turn before', () => {
    const p = new ReadPacer();
    p.windowMs = 30;
    p.pace(); // a turn begins
    const t0 = performance.now();
    reads(p, p.fromReads);
    let before = 0;
    p.pace(() => before++);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(28);
    expect(before).toBe(1);
    expect(p.pauses).toBe(1);
    expect(p.pausedMs).toBeGreaterThan(20);
  });

  it('never holds a turn with few reads, a turn already longer than the window, or with the window 0', () => {
    const p = new ReadPacer();
    p.windowMs = 30;
    let before = 0;
    p.pace();
    reads(p, p.fromReads - 1);
    p.pace(() => before++);
    expect(p.pauses).toBe(0);

    const end = performance.now() + 35;
    while (performance.now() < end); // the turn's own work took longer than the window
    reads(p, 1000);
    p.pace(() => before++);
    expect(p.pauses).toBe(0);

    p.windowMs = 0;
    p.pace();
    reads(p, 1000);
    p.pace(() => before++);
    expect(p.pauses).toBe(0);
    expect(before).toBe(0);
  });

  it('counts reads per turn: a pace starts the count again', () => {
    const p = new ReadPacer();
    p.windowMs = 30;
    reads(p, p.fromReads);
    p.pace(); // the first turn's pause, if any
    const paused = p.pauses;
    reads(p, p.fromReads - 1);
    p.pace();
    expect(p.pauses).toBe(paused);
  });
});

describe('IngestBatcher with a pacer', () => {
  it("hands the turn's events to subscribers before it pauses", async () => {
    const order: string[] = [];
    class Recording extends ReadPacer {
      override pace(beforePause?: () => void): void {
        super.pace(() => {
          order.push('pausing');
          beforePause?.();
        });
        order.push('turn over');
      }
    }
    const pacer = new Recording();
    pacer.windowMs = 30;
    const queue = new EventQueue();
    const framework = new NotificationFramework({ queue });
    const batcher = new IngestBatcher(framework, 20_000, pacer);
    const sub = queue.subscribe();
    sub.onReadable(() => order.push(`delivered ${sub.take().events.length}`));
    pacer.pace(); // a turn begins
    order.length = 0;
    reads(pacer, pacer.fromReads);
    batcher.push([ev(1), ev(2)], () => order.push('stored'));
    batcher.push([ev(3)], () => order.push('stored'));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['stored', 'stored', 'pausing', 'delivered 3', 'turn over']);
    expect(pacer.pauses).toBe(1);
  });

  it("without a pause, subscribers are woken as before (the queue's own wake-up)", async () => {
    const pacer = new ReadPacer();
    pacer.windowMs = 0;
    const queue = new EventQueue();
    const batcher = new IngestBatcher(new NotificationFramework({ queue }), 20_000, pacer);
    const sub = queue.subscribe();
    let got = 0;
    sub.onReadable(() => (got += sub.take().events.length));
    batcher.push([ev(1)], () => undefined);
    for (let i = 0; i < 5 && got === 0; i++) await new Promise((r) => setImmediate(r));
    expect(got).toBe(1);
  });

  it('commits within a long turn once the oldest waiting record is COMMIT_AFTER_MS old, and hands it on at once', () => {
    const queue = new EventQueue();
    const batcher = new IngestBatcher(new NotificationFramework({ queue }), 20_000, null);
    const sub = queue.subscribe();
    let delivered = 0;
    sub.onReadable(() => (delivered += sub.take().events.length));
    let stored = 0;
    batcher.push([ev(1)], () => stored++);
    const end = performance.now() + COMMIT_AFTER_MS + 1;
    while (performance.now() < end); // the turn goes on reading
    batcher.push([ev(2)], () => stored++);
    // both committed and delivered before the turn ended (no setImmediate has run)
    expect(stored).toBe(2);
    expect(batcher.commits).toBe(1);
    expect(delivered).toBe(2);
    batcher.push([ev(3)], () => stored++);
    expect(stored).toBe(2); // a fresh record waits for the end of the turn, as before
  });
});
