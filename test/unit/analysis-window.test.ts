// Choosing the window: --last (the newest failure-like event, found by paging backwards through
// candidates only), --at, --window; and the same path over the real store, whose query gained
// the (plugin, event) list and the backwards cursor it needs.
import { afterEach, describe, expect, it } from 'vitest';
import { analyzeFromStore, findLastFailure, windowAround } from '../../host/analysis/analyze.js';
import { FAILURE_KINDS } from '../../host/analysis/classify.js';
import { EventStore } from '../../host/store/event-store.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DEMO, Scenario, asStored } from '../helpers/analysis-scenario.js';
import { memorySource } from '../helpers/memory-events.js';

const S = 1_000_000;

/** An old segfault, a recent SIGTERM, then 600 ignored SIGUSR1s and quiet heartbeats. */
function history(): { s: Scenario; segv: ReturnType<Scenario['signal']>; term: ReturnType<Scenario['signal']> } {
  const s = new Scenario();
  s.heartbeats(0, 1_100_000, 5000);
  const segv = s.signal(100_000, 11, DEMO, DEMO, { code: 1 });
  const term = s.signal(1_000_000, 15, { pid: 830, comm: 'vesper-demo-svc' }, { pid: 901, comm: 'kill' });
  for (let i = 0; i < 600; i++) s.signal(1_010_000 + i * 100, 10, { pid: 50, comm: 'sleep' }, { pid: 51, comm: 'node' }, { result: 1 });
  return { s, segv, term };
}

function usage(fn: () => unknown): VesperError {
  try {
    fn();
  } catch (err) {
    return err as VesperError;
  }
  throw new Error('no error');
}

describe('window selection', () => {
  it('--last: the newest failure-like event, 2 min before it and 30 s after', () => {
    const { s, term } = history();
    const events = s.done();
    const a = analyzeFromStore(memorySource(events), { vm: 'web1', last: true });
    expect(a.anchor).toEqual({ mode: 'last', atUs: term.hostTimeUs, eventId: term.id });
    expect(a.window).toEqual({ fromUs: term.hostTimeUs - 120 * S, toUs: term.hostTimeUs + 30 * S });
    expect(a.verdicts[0]).toMatchObject({ kind: 'app-killed', scope: 'service' });
    expect(a.verdicts[0]!.evidence).toContain(term.id);
    // Only the window was read: the old segfault is not in it.
    expect(a.verdicts.map((v) => v.kind)).not.toContain('app-crash');
    expect(a.timeline.every((e) => e.hostTimeUs >= a.window.fromUs && e.hostTimeUs <= a.window.toUs)).toBe(true);
  });

  it('neither --at nor --last means --last', () => {
    const { s, term } = history();
    expect(analyzeFromStore(memorySource(s.done()), { vm: 'web1' }).anchor.eventId).toBe(term.id);
  });

  it('--at: the failure nearest that time, and --window sets how far back (a quarter of it after)', () => {
    const { s, segv } = history();
    const events = s.done();
    const at = s.at(100_400);
    const a = analyzeFromStore(memorySource(events), { vm: 'web1', atUs: at, windowUs: 10 * S });
    expect(a.anchor).toEqual({ mode: 'at', atUs: at, eventId: segv.id });
    expect(a.window).toEqual({ fromUs: at - 10 * S, toUs: at + 2.5 * S });
    expect(a.verdicts[0]).toMatchObject({ kind: 'app-crash', scope: 'service', confidence: 'confident' });
  });

  it('--at a quiet moment: an analysis with no verdict, not an error', () => {
    const { s } = history();
    const a = analyzeFromStore(memorySource(s.done()), { vm: 'web1', atUs: s.at(500_000) });
    expect(a.anchor.eventId).toBeNull();
    expect(a.verdicts).toEqual([]);
    expect(a.eventCount).toBeGreaterThan(0);
  });

  it('--last with nothing failure-like stored is VSP_ANALYSIS_NO_FAILURE, with a clear message', () => {
    const s = new Scenario();
    s.heartbeats(0, 60_000);
    const err = usage(() => analyzeFromStore(memorySource(s.done()), { vm: 'web1', last: true }));
    expect(err.code).toBe(ErrorCode.ANALYSIS_NO_FAILURE);
    expect(err.message).toMatch(/no failure-like event is stored for web1.*--at/);
  });

  it('refuses --at with --last, and windows out of range', () => {
    const src = memorySource([]);
    expect(usage(() => analyzeFromStore(src, { vm: 'web1', last: true, atUs: 5 })).code).toBe(ErrorCode.USAGE);
    expect(usage(() => analyzeFromStore(src, { vm: 'web1', windowUs: 10 })).code).toBe(ErrorCode.USAGE);
    expect(usage(() => analyzeFromStore(src, { vm: '' })).code).toBe(ErrorCode.USAGE);
  });

  it('windowAround never starts before the epoch', () => {
    expect(windowAround(5 * S)).toEqual({ fromUs: 0, toUs: 35 * S });
  });
});

describe('over the real store', () => {
  let store: EventStore | null = null;
  afterEach(() => {
    store?.close();
    store = null;
  });

  it('finds the last failure through the (plugin, event) filter and the backwards cursor, then analyses its window', () => {
    const { s, term } = history();
    const other = new Scenario('db1');
    other.signal(1_050_000, 11, DEMO, DEMO, { code: 1 }); // another VM's failure, later: not ours
    const events = [...s.events, ...other.events].sort((a, b) => a.hostTimeUs - b.hostTimeUs).map(asStored);
    store = EventStore.open(':memory:');
    store.append(events);
    const termId = events.find((e) => e.hostTimeUs === term.hostTimeUs && e.plugin === 'signal')!.id!;

    const usr1Id = events.find((e) => e.vm === 'web1' && e.hostTimeUs > term.hostTimeUs && e.plugin === 'signal')!.id!;
    const page = store.query({ vm: 'web1', kinds: FAILURE_KINDS, order: 'desc', limit: 3, beforeId: usr1Id + 1 });
    // The first SIGUSR1 after the SIGTERM, the SIGTERM, the old SIGSEGV: heartbeats in between are not candidates.
    expect(page.slice(0, 2).map((e) => e.id)).toEqual([usr1Id, termId]);
    expect(page.map((e) => (e.payload['signal'] as { sig: number }).sig)).toEqual([10, 15, 11]);
    expect(store.query({ vm: 'web1', kinds: [], limit: 10 })).toEqual([]);

    expect(findLastFailure(store, 'web1')?.id).toBe(termId);
    const a = analyzeFromStore(store, { vm: 'web1', last: true });
    expect(a.anchor.eventId).toBe(termId);
    expect(a.verdicts[0]).toMatchObject({ kind: 'app-killed', scope: 'service', confidence: 'confident' });
    expect(a.verdicts[0]!.summary).toContain('901 (kill)');
    // Payloads decoded from the stored records.
    const e = a.timeline.find((x) => x.id === termId)!;
    expect(e.payload).toMatchObject({ signal: { sig: 15, sender: { pid: 901, comm: 'kill' } } });
    expect(e.description).toBe('SIGTERM to 830 (vesper-demo-svc) from 901 (kill)');
  });
});
