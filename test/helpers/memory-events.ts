// The store's query over an array, for tests of code that reads events through EventStore.query:
// the same filters (vm, plugin, event, kinds, time range, id cursors, discarded), order and limit.
import type { VesperEvent } from '../../host/notify/event.js';
import type { EventQuery } from '../../host/store/event-query.js';

export function queryArray(events: readonly VesperEvent[], q: EventQuery): VesperEvent[] {
  const out = events.filter(
    (e) =>
      (q.vm === undefined || e.vm === q.vm) &&
      (q.plugin === undefined || e.plugin === q.plugin) &&
      (q.event === undefined || e.event === q.event) &&
      (q.kinds === undefined || q.kinds.some((k) => k.plugin === e.plugin && k.event === e.event)) &&
      (q.sinceUs === undefined || e.hostTimeUs >= q.sinceUs) &&
      (q.untilUs === undefined || e.hostTimeUs < q.untilUs) &&
      (q.afterId === undefined || (e.id ?? 0) > q.afterId) &&
      (q.beforeId === undefined || (e.id ?? 0) < q.beforeId) &&
      (q.includeDiscarded === true || e.disposition !== 'discard'),
  );
  out.sort((a, b) => (q.order === 'desc' ? (b.id ?? 0) - (a.id ?? 0) : (a.id ?? 0) - (b.id ?? 0)));
  return out.slice(0, q.limit ?? 1000);
}

/** An EventSource (host/analysis/analyze.ts) over an array. */
export function memorySource(events: readonly VesperEvent[]): { query: (q: EventQuery) => VesperEvent[] } {
  return { query: (q) => queryArray(events, q) };
}
