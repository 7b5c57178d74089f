// Detection latency: from the guest kernel's record of an event (its CLOCK_MONOTONIC, put on the
// host's monotonic clock with the link's measured clock offset) to the event being stored, by
// plugin. A histogram of fixed buckets kept as plain arrays: observing is a few comparisons on
// the ingest path, and the Prometheus form (_bucket, _sum, _count) is made only when scraped.

/** seconds: 1 ms to 10 s, where the channel's floor (~1-4 ms under TCG) and a slow commit both land */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

interface Series {
  /** per bucket (not cumulative), then +Inf */
  counts: Float64Array;
  sum: number;
  count: number;
}

export interface MetricValue {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

export class LatencyHistogram {
  readonly type = 'histogram';
  private readonly series = new Map<string, Series>();
  private lastKey: string | null = null;
  private last: Series | null = null;

  constructor(
    readonly name: string,
    readonly help: string,
    /** the one label telling series apart */
    readonly label: string,
  ) {}

  observe(key: string, seconds: number): void {
    let s = this.last;
    if (s === null || key !== this.lastKey) {
      s = this.series.get(key) ?? null;
      if (s === null) this.series.set(key, (s = { counts: new Float64Array(LATENCY_BUCKETS.length + 1), sum: 0, count: 0 }));
      this.last = s;
      this.lastKey = key;
    }
    let i = 0;
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]!) i++;
    s.counts[i]!++;
    s.sum += seconds;
    s.count++;
  }

  /** prom-client's metric interface (Registry.registerMetric): the values in its form. */
  get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const values: MetricValue[] = [];
    for (const [key, s] of this.series) {
      let acc = 0;
      for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
        acc += s.counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { [this.label]: key, le: LATENCY_BUCKETS[i]! }, value: acc });
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { [this.label]: key, le: '+Inf' }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: { [this.label]: key }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { [this.label]: key }, value: s.count });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values, aggregator: 'sum' });
  }

  reset(): void {
    this.series.clear();
    this.last = null;
  }
}
