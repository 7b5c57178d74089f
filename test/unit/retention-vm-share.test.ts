// Size retention with a per-VM share, against a real SQLite store: a VM flooding the store loses
// its own oldest events, not the other VMs' history, and the by-VM index (vm_ids) stays exact.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventStore, type EventStoreOptions } from '../../host/store/event-store.js';
import { ErrorCode } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';
import { guestBatch } from './event-store-fixtures.js';

let dir: string;
let opened: EventStore[];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-share-'));
  opened = [];
});
afterEach(() => {
  for (const s of opened) s.close();
  rmSync(dir, { recursive: true, force: true });
});

function open(opts: EventStoreOptions): EventStore {
  // indexEveryMs: 1, so that vm_ids takes rows at every append, as it does over a second of ingest
  const s = EventStore.open(join(dir, `events-${opened.length}.db`), { indexEveryMs: 1, ...opts });
  opened.push(s);
  return s;
}

const MAX_BYTES = 512 * 1024;

/** Two quiet VMs with the oldest events, then a flood from a third: 4,000 rows of 400 bytes. */
function fill(s: EventStore): void {
  s.append(guestBatch('quiet-a', 'ra', 1, 150, 400));
  s.append(guestBatch('quiet-b', 'rb', 1, 150, 400));
  for (let b = 0; b < 8; b++) s.append(guestBatch('flood', 'rf', b * 500 + 1, 500, 400));
  // and the quiet ones go on, a little, in the middle of it all
  s.append(guestBatch('quiet-a', 'ra', 151, 10, 400));
}

function seqsOf(s: EventStore, vm: string): number[] {
  return s.query({ vm, limit: 100_000 }).map((e) => e.source!.seq);
}

describe('size retention with a per-VM share', () => {
  it("takes the flooding VM's oldest events, leaving the others' whole; oldest-first (share 1) took theirs", () => {
    const shared = open({ retention: { maxBytes: MAX_BYTES, vmShare: 0.5 } });
    const plain = open({ retention: { maxBytes: MAX_BYTES } });
    for (const s of [shared, plain]) {
      fill(s);
      expect(s.stats().bytes).toBeGreaterThan(3 * MAX_BYTES);
      for (let i = 0; i < 10 && !s.prune().complete; i++);
      expect(s.stats().bytes).toBeLessThanOrEqual(MAX_BYTES);
    }
    // with the share: every quiet event is there, read through the by-VM index and counted by it
    expect(seqsOf(shared, 'quiet-a')).toEqual(Array.from({ length: 160 }, (_, i) => i + 1));
    expect(seqsOf(shared, 'quiet-b')).toEqual(Array.from({ length: 150 }, (_, i) => i + 1));
    expect(shared.vmStats('quiet-a').events).toBe(160);
    expect(shared.vmStats('quiet-b').events).toBe(150);
    // the flood lost its oldest, and only those: what is left is its newest, without a hole
    const flood = seqsOf(shared, 'flood');
    expect(flood.length).toBeGreaterThan(100);
    expect(flood.length).toBeLessThan(4000);
    expect(flood).toEqual(Array.from({ length: flood.length }, (_, i) => 4000 - flood.length + 1 + i));
    expect(shared.vmStats('flood').events).toBe(flood.length);
    expect(shared.countSeqs('flood', 'rf').count).toBe(flood.length);
    // an agent told what the store holds still hears 4,000: the pruned records are not sent again
    expect(shared.highestSeq('flood', 'rf')).toBe(4000);

    // oldest first, whoever's: the quiet VMs' first events went before any of the flood's
    expect(seqsOf(plain, 'quiet-b')).toEqual([]);
    expect(plain.vmStats('quiet-b').events).toBe(0);
  });

  it("with no VM over its share, deletes the oldest events whoever's", () => {
    const s = open({ retention: { maxBytes: MAX_BYTES, vmShare: 0.5 } });
    // three VMs of a third each, interleaved in time
    for (let b = 0; b < 6; b++) for (const vm of ['a', 'b', 'c']) s.append(guestBatch(vm, 'r', b * 200 + 1, 200, 400));
    for (let i = 0; i < 10 && !s.prune().complete; i++);
    expect(s.stats().bytes).toBeLessThanOrEqual(MAX_BYTES);
    const left = ['a', 'b', 'c'].map((vm) => seqsOf(s, vm));
    // each lost its oldest, about as many as the others (the oldest rows were everyone's)
    for (const l of left) expect(l.at(-1)).toBe(1200);
    const lens = left.map((l) => l.length);
    expect(Math.max(...lens) - Math.min(...lens)).toBeLessThanOrEqual(200);
  });

  it('keeps the by-VM index exact through later appends and prunes', () => {
    const s = open({ retention: { maxBytes: MAX_BYTES, vmShare: 0.3 } });
    fill(s);
    for (let i = 0; i < 10 && !s.prune().complete; i++);
    s.append(guestBatch('quiet-b', 'rb', 151, 5, 400));
    s.append(guestBatch('flood', 'rf', 4001, 500, 400));
    for (let i = 0; i < 10 && !s.prune().complete; i++);
    for (const vm of ['quiet-a', 'quiet-b', 'flood']) {
      const seqs = seqsOf(s, vm);
      expect(s.vmStats(vm).events, vm).toBe(seqs.length);
      expect(
        s.query({ vm, order: 'desc', limit: 3 }).map((e) => e.source!.seq),
        vm,
      ).toEqual(seqs.slice(-3).reverse());
    }
    expect(seqsOf(s, 'quiet-b')).toHaveLength(155);
    expect(seqsOf(s, 'quiet-a')).toHaveLength(160);
  });

  it('refuses a share outside (0, 1]', () => {
    for (const vmShare of [0, -0.5, 1.5, Number.NaN])
      expect(caught(() => EventStore.open(join(dir, 'x.db'), { retention: { maxBytes: 1, vmShare } })).code).toBe(ErrorCode.CONFIG_INVALID);
  });
});
