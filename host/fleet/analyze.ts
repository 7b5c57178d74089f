// `vesper fleet analyze VM`: one timeline of a VM across every host that ran it, from the bus.
// Each host stamps events with its own clock; the bus stamps them as it stores them. A host's
// clock is put on the bus's by the smallest (bus − host) difference among its events: the
// publish delay is never negative, so the smallest difference is the clock offset plus the
// quickest publish, and a backlog sent after an outage does not skew it. The analysis itself is
// vesper analyze's (host/analysis), run over the bus's events instead of a host's store.
import { analyzeFromStore, type AnalysisRequest } from '../analysis/analyze.js';
import type { Analysis } from '../analysis/types.js';
import type { VesperEvent, Disposition } from '../notify/event.js';
import type { EventQuery } from '../store/event-query.js';
import type { BusEvent } from './bus.js';

export interface HostClock {
  host: string;
  /** added to the host's times to put them on the bus's clock (µs) */
  offsetUs: number;
  events: number;
  firstBusUs: number;
  lastBusUs: number;
}

export interface FleetAnalysis {
  analysis: Analysis;
  hosts: HostClock[];
  /** timeline entry id (the bus's stream sequence) to the host it came from */
  hostOf: Record<number, string>;
}

export function hostClocks(events: readonly BusEvent[]): Map<string, HostClock> {
  const out = new Map<string, HostClock>();
  for (const e of events) {
    const d = e.busTimeUs - e.hostTimeUs;
    const c = out.get(e.host);
    if (!c) out.set(e.host, { host: e.host, offsetUs: d, events: 1, firstBusUs: e.busTimeUs, lastBusUs: e.busTimeUs });
    else {
      c.offsetUs = Math.min(c.offsetUs, d);
      c.events++;
      c.firstBusUs = Math.min(c.firstBusUs, e.busTimeUs);
      c.lastBusUs = Math.max(c.lastBusUs, e.busTimeUs);
    }
  }
  return out;
}

/** An in-memory EventSource: what analyzeFromStore asks of a store, over the bus's events. */
export class ArraySource {
  constructor(private readonly events: readonly VesperEvent[]) {}

  query(q: EventQuery): VesperEvent[] {
    const out: VesperEvent[] = [];
    const list = q.order === 'desc' ? [...this.events].reverse() : this.events;
    const limit = q.limit ?? 1000;
    for (const e of list) {
      const id = e.id ?? 0;
      if (q.vm !== undefined && e.vm !== q.vm) continue;
      if (q.plugin && e.plugin !== q.plugin) continue;
      if (q.event && e.event !== q.event) continue;
      if (q.sinceUs !== undefined && e.hostTimeUs < q.sinceUs) continue;
      if (q.untilUs !== undefined && e.hostTimeUs >= q.untilUs) continue;
      if (q.afterId !== undefined && id <= q.afterId) continue;
      if (q.beforeId !== undefined && id >= q.beforeId) continue;
      if (q.kinds && !q.kinds.some((k) => k.plugin === e.plugin && k.event === e.event)) continue;
      if (!q.includeDiscarded && e.disposition === 'discard') continue;
      out.push(e);
      if (out.length >= limit) break;
    }
    return out;
  }
}

export function fleetAnalyze(events: readonly BusEvent[], req: AnalysisRequest): FleetAnalysis {
  const clocks = hostClocks(events);
  const hostOf: Record<number, string> = {};
  // On the bus's clock, in that order (ids are stream sequences, so id order is bus order too).
  const placed: VesperEvent[] = events
    .map((e): VesperEvent => {
      hostOf[e.streamSeq] = e.host;
      return {
        id: e.streamSeq,
        vm: e.vm,
        plugin: e.plugin,
        instance: e.instance,
        event: e.event,
        guestTimeUs: e.guestTimeUs,
        hostTimeUs: e.hostTimeUs + (clocks.get(e.host)?.offsetUs ?? 0),
        source: e.agentRun !== null && e.seq !== null ? { agentRun: e.agentRun, seq: e.seq } : null,
        payload: e.payload,
        disposition: (e.disposition ?? undefined) as Disposition | undefined,
      };
    })
    .sort((a, b) => (a.id ?? 0) - (b.id ?? 0));
  const analysis = analyzeFromStore(new ArraySource(placed), req);
  for (const t of analysis.timeline) t.description = `[${hostOf[t.id] ?? '?'}] ${t.description}`;
  return { analysis, hosts: [...clocks.values()].sort((a, b) => a.firstBusUs - b.firstBusUs), hostOf };
}

/** The text under `vesper analyze`'s: each host and how its clock was put on the bus's. */
export function hostsText(hosts: readonly HostClock[]): string {
  const lines = ['', 'HOSTS (every time above is on the bus clock; each host stamps its events with its own)'];
  for (const h of hosts) {
    const ms = (h.offsetUs / 1000).toFixed(3);
    lines.push(
      `  ${h.host}: ${h.events} event${h.events === 1 ? '' : 's'}, ${new Date(h.firstBusUs / 1000).toISOString()} to ` +
        `${new Date(h.lastBusUs / 1000).toISOString()}; bus − host clock ≤ ${Number(ms) >= 0 ? '+' : ''}${ms} ms (quickest publish)`,
    );
  }
  return `${lines.join('\n')}\n`;
}
