// `vesper analyze`: the window around a failure, read from the store with the same query as
// `vesper events`, turned into one timeline on the host's clock and verdicts with evidence.
//
// analyze() is pure (events in, Analysis out). analyzeFromStore() is the one code path from a
// request to an answer, used by vesperd and the benchmark alike: for --last it pages backwards
// through the candidate failure events only (an SQL filter on plugin and event, checked by
// payload here), then reads the window once.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from '../notify/event.js';
import type { EventQuery } from '../store/event-query.js';
import { classify } from './classify.js';
import { FAILURE_KINDS, isFailureLike } from './failure-like.js';
import { entryOf, placeEvents, reconcileClocks, type Placed } from './timeline.js';
import type { Analysis, TimelineEntry } from './types.js';

const S = 1_000_000;
/** Default window: this long before the failure... */
export const DEFAULT_BEFORE_US = 120 * S;
/** ...and a quarter of it after: what the failure caused (restarts, actions, the silence). */
export const AFTER_FRACTION = 0.25;
/** Most events one analysis reads: beyond this, the earliest of the window are left out. */
export const MAX_WINDOW_EVENTS = 100_000;
/** Most timeline entries kept (evidence always; then the events nearest the failure). */
export const MAX_TIMELINE_ENTRIES = 2000;
/** Candidate failure events read per page when looking for the last one. */
const ANCHOR_PAGE = 256;

export interface AnalyzeOptions {
  vm: string;
  window: { fromUs: number; toUs: number };
  /** eventId null with mode 'at': the failure-like event nearest atUs is taken, if any */
  anchor: { mode: 'at' | 'last'; atUs: number; eventId: number | null };
  nowUs?: number;
  maxEntries?: number;
  /** the window held more events than were read */
  truncated?: boolean;
}

/** The window around a moment: `beforeUs` before it, a quarter of that after. */
export function windowAround(atUs: number, beforeUs = DEFAULT_BEFORE_US): { fromUs: number; toUs: number } {
  return { fromUs: Math.max(0, atUs - beforeUs), toUs: atUs + Math.round(beforeUs * AFTER_FRACTION) };
}

/** Heartbeats kept in the timeline: the first and last of each run, and those at the edges of a gap. */
function heartbeatsToShow(placed: readonly Placed[]): { keep: Set<number>; omitted: number } {
  const byRun = new Map<string, Placed[]>();
  for (const p of placed) {
    if (p.ev.plugin !== 'heartbeat' || p.ev.event !== 'beat') continue;
    const run = p.ev.source?.agentRun ?? '';
    let l = byRun.get(run);
    if (l === undefined) byRun.set(run, (l = []));
    l.push(p);
  }
  const keep = new Set<number>();
  let omitted = 0;
  for (const beats of byRun.values()) {
    // The interval from one beat's payload (decoding every beat would cost more than the rest).
    const first = beats[0] as Placed;
    const hb = first.ev.payload['heartbeat'] as { intervalMs?: number } | undefined;
    const intervalUs = (hb?.intervalMs || 1000) * 1000;
    const gapUs = 2 * intervalUs + 500_000;
    for (let i = 0; i < beats.length; i++) {
      const p = beats[i] as Placed;
      const before = i > 0 ? p.timeUs - (beats[i - 1] as Placed).timeUs : Infinity;
      const after = i + 1 < beats.length ? (beats[i + 1] as Placed).timeUs - p.timeUs : Infinity;
      if (i === 0 || i === beats.length - 1 || before > gapUs || after > gapUs) keep.add(p.id);
      else omitted++;
    }
  }
  return { keep, omitted };
}

/** The analysis of one window's events (any order; the store's ids set). */
export function analyze(events: readonly VesperEvent[], o: AnalyzeOptions): Analysis {
  const { clocks, offsets } = reconcileClocks(events);
  const placed = placeEvents(events, offsets);
  const anchor = { ...o.anchor };
  if (anchor.eventId === null) {
    let best: Placed | null = null;
    for (const p of placed)
      if (isFailureLike(p.ev) && (best === null || Math.abs(p.timeUs - anchor.atUs) < Math.abs(best.timeUs - anchor.atUs))) best = p;
    if (best) anchor.eventId = best.id;
  }
  const verdicts = classify(placed, { anchorId: anchor.eventId });
  const evidence = new Set<number>();
  for (const v of verdicts) for (const id of v.evidence) evidence.add(id);

  const beats = heartbeatsToShow(placed);
  let shown = placed.filter((p) => evidence.has(p.id) || !(p.ev.plugin === 'heartbeat' && p.ev.event === 'beat') || beats.keep.has(p.id));
  let distant = 0;
  const max = o.maxEntries ?? MAX_TIMELINE_ENTRIES;
  if (shown.length > max) {
    const anchorUs = placed.find((p) => p.id === anchor.eventId)?.timeUs ?? anchor.atUs;
    const rest = shown.filter((p) => !evidence.has(p.id)).sort((a, b) => Math.abs(a.timeUs - anchorUs) - Math.abs(b.timeUs - anchorUs));
    const room = Math.max(0, max - (shown.length - rest.length));
    const keep = new Set(rest.slice(0, room).map((p) => p.id));
    distant = rest.length - keep.size;
    shown = shown.filter((p) => evidence.has(p.id) || keep.has(p.id));
  }
  const timeline: TimelineEntry[] = shown.map((p) => {
    const e = entryOf(p);
    if (evidence.has(p.id)) e.evidence = true;
    return e;
  });
  const a: Analysis = {
    version: 1,
    vm: o.vm,
    generatedAtUs: o.nowUs ?? Date.now() * 1000,
    window: { ...o.window },
    anchor,
    timeline,
    verdicts,
    clocks,
    eventCount: events.length,
  };
  if (beats.omitted || distant) a.omitted = { heartbeats: beats.omitted, distant };
  if (o.truncated) a.truncated = true;
  return a;
}

/** What analyzeFromStore needs of the store: EventStore's query. */
export interface EventSource {
  query(q: EventQuery): VesperEvent[];
}

export interface AnalysisRequest {
  vm: string;
  /** a failure near this host time (µs); with neither, the last failure */
  atUs?: number;
  last?: boolean;
  /** how far before the failure the window reaches (µs); a quarter of it after */
  windowUs?: number;
  nowUs?: number;
}

/** The newest stored event of the VM that looks like a failure, or null. */
export function findLastFailure(store: EventSource, vm: string): VesperEvent | null {
  let beforeId: number | undefined;
  // Usually the failure is among the newest candidates; when routine exits bury it, pages grow.
  for (let limit = ANCHOR_PAGE; ; limit = Math.min(limit * 2, 16 * ANCHOR_PAGE)) {
    const page = store.query({ vm, kinds: FAILURE_KINDS, order: 'desc', limit, includeDiscarded: true, beforeId });
    for (const e of page) if (isFailureLike(e)) return e;
    if (page.length < limit) return null;
    beforeId = page[page.length - 1]!.id;
  }
}

/** From a request to an answer: the anchor, one query for the window, the analysis. */
export function analyzeFromStore(store: EventSource, r: AnalysisRequest): Analysis {
  if (!r.vm) throw new VesperError(ErrorCode.USAGE, 'analyze needs a VM');
  if (r.atUs && r.last) throw new VesperError(ErrorCode.USAGE, 'give --at TIME or --last, not both');
  const beforeUs = r.windowUs || DEFAULT_BEFORE_US;
  if (beforeUs < S || beforeUs > 7 * 86_400 * S)
    throw new VesperError(ErrorCode.USAGE, `--window must be between 1s and 7d, got ${Math.round(beforeUs / 1000)} ms`);
  let anchor: AnalyzeOptions['anchor'];
  if (r.atUs) anchor = { mode: 'at', atUs: r.atUs, eventId: null };
  else {
    const last = findLastFailure(store, r.vm);
    if (!last)
      throw new VesperError(
        ErrorCode.ANALYSIS_NO_FAILURE,
        `no failure-like event is stored for ${r.vm} (no fatal signal, OOM kill, crash, panic, watchdog, I/O error, heartbeat or agent loss): ` +
          'nothing to analyse; give --at TIME to look at a moment of your choice',
      );
    anchor = { mode: 'last', atUs: last.hostTimeUs, eventId: last.id ?? null };
  }
  const window = windowAround(anchor.atUs, beforeUs);
  // Newest first, so that a window too busy to read whole keeps the failure and what followed.
  const events = store.query({
    vm: r.vm,
    sinceUs: window.fromUs,
    untilUs: window.toUs + 1,
    includeDiscarded: true, // a filter that keeps an event from notifying does not make it less true
    limit: MAX_WINDOW_EVENTS,
    order: 'desc',
  });
  events.reverse();
  return analyze(events, {
    vm: r.vm,
    window,
    anchor,
    nowUs: r.nowUs,
    truncated: events.length >= MAX_WINDOW_EVENTS,
  });
}

/**
 * The analysis as JSON text of at most maxBytes (an API frame is limited): timeline entries
 * that are not evidence are dropped, farthest from the failure first, until it fits.
 */
export function analysisJson(a: Analysis, maxBytes: number): string {
  let text = JSON.stringify(a);
  if (Buffer.byteLength(text) <= maxBytes) return text;
  const anchorUs = a.timeline.find((e) => e.id === a.anchor.eventId)?.timeUs ?? a.anchor.atUs;
  const byDistance = a.timeline.filter((e) => !e.evidence).sort((x, y) => Math.abs(y.timeUs - anchorUs) - Math.abs(x.timeUs - anchorUs));
  let drop = Math.ceil(byDistance.length / 4);
  while (drop <= byDistance.length) {
    const gone = new Set(byDistance.slice(0, drop).map((e) => e.id));
    const b: Analysis = {
      ...a,
      timeline: a.timeline.filter((e) => !gone.has(e.id)),
      omitted: { heartbeats: a.omitted?.heartbeats ?? 0, distant: (a.omitted?.distant ?? 0) + gone.size },
    };
    text = JSON.stringify(b);
    if (Buffer.byteLength(text) <= maxBytes) return text;
    if (drop === byDistance.length) break;
    drop = Math.min(byDistance.length, drop * 2);
  }
  // Evidence alone is too large (huge payloads): keep the entries, drop their payloads.
  return JSON.stringify({
    ...a,
    timeline: a.timeline.filter((e) => e.evidence).map((e) => ({ ...e, payload: { omitted: 'too large for one answer' } })),
  });
}
