// vesperd's Prometheus metrics (prom-client's registry and text format), served over HTTP on
// metrics.listen. Nothing here is counted on the ingest path by prom-client: the framework's
// EventTally, the links' LatencyHistogram and the counters the daemon's parts keep anyway are
// read when Prometheus scrapes, so the cost of metrics is that of a scrape, not of an event.
import { createServer, type Server } from 'node:http';
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import type { MetricsListen } from '../config/metrics-config.js';
import { EventTally } from '../notify/event-tally.js';
import { LatencyHistogram, type MetricValue } from './latency.js';

/** One VM's link as the metrics read it. */
export interface LinkReading {
  vm: string;
  transport: string;
  up: boolean;
  /** records the agent reported lost (its ring overflowed) on this link */
  lostAgent: number;
  /** records lost with ended agent runs */
  lostEndedRun: number;
  /** times the link was paused for its ingest budget, and for how long in all (ms) */
  throttles: number;
  throttledMs: number;
}

/** One export sink as the metrics read it (host/export, when there are sinks). */
export interface SinkReading {
  name: string;
  kind: string;
  backlog: number;
  delivered: number;
  failures: number;
}

/** What the metrics read from the daemon at each scrape. */
export interface MetricsSource {
  links(): Iterable<LinkReading>;
  storeBytes(): number;
  /** the store's size limit (store.retention.max_size), bytes */
  storeLimitBytes(): number;
  ingest(): { commits: number; failures: number; duplicates: number; unregisteredPlugin: number };
  sinks?(): Iterable<SinkReading>;
}

type Collect = () => MetricValue[];

/** A metric whose values are read when scraped (prom-client's metric interface). */
class Read {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
    private readonly collect: Collect,
  ) {}
  get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values: this.collect(), aggregator: 'sum' });
  }
  reset(): void {}
}

export class Metrics {
  readonly registry = new Registry();
  readonly tally = new EventTally();
  readonly latency = new LatencyHistogram(
    'vesper_detection_latency_seconds',
    'Time from the guest kernel recording an event to vesperd storing it, on the host clock (guest clock offset measured by ping).',
    'plugin',
  );
  private retentionDeleted = 0;
  private readonly actions = new Map<string, { action: string; result: string; count: number }>();
  private server: Server | null = null;
  /** where it listens, once it does */
  where = '';

  constructor(private readonly src: MetricsSource) {
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'vesper_' });
    new Gauge({
      name: 'vesper_build_info',
      help: 'vesperd build: version and Node.js, always 1.',
      labelNames: ['version', 'node'],
      registers: [r],
    })
      .labels(VESPER_VERSION, process.versions.node)
      .set(1);
    const add = (name: string, help: string, type: 'counter' | 'gauge', collect: Collect): void =>
      r.registerMetric(new Read(name, help, type, collect) as never);
    add(
      'vesper_events_total',
      "Events stored, by VM, plugin, event and the filter's disposition (notify, discard, action).",
      'counter',
      () =>
        this.tally
          .rows()
          .map((x) => ({ labels: { vm: x.vm, plugin: x.plugin, event: x.event, disposition: x.disposition }, value: x.count })),
    );
    add('vesper_link_up', "Whether the link to the VM's agent is up (1) or not (0), by VM and transport (virtio, ssh).", 'gauge', () =>
      [...this.src.links()].map((l) => ({ labels: { vm: l.vm, transport: l.transport }, value: l.up ? 1 : 0 })),
    );
    add(
      'vesper_records_lost_total',
      "Guest records lost before the host held them, by VM and source (agent_ring: the agent's ring overflowed; ended_run: numbered by an agent run that ended before sending them).",
      'counter',
      () =>
        [...this.src.links()].flatMap((l) => [
          { labels: { vm: l.vm, source: 'agent_ring' }, value: l.lostAgent },
          { labels: { vm: l.vm, source: 'ended_run' }, value: l.lostEndedRun },
        ]),
    );
    add(
      'vesper_ingest_throttled_total',
      'Times a link was paused for being over its ingest budget (channel.ingest), by VM.',
      'counter',
      () => [...this.src.links()].map((l) => ({ labels: { vm: l.vm }, value: l.throttles })),
    );
    add('vesper_ingest_throttled_seconds_total', 'Time links were paused for their ingest budget, by VM.', 'counter', () =>
      [...this.src.links()].map((l) => ({ labels: { vm: l.vm }, value: l.throttledMs / 1000 })),
    );
    add('vesper_ingest_commits_total', 'Group commits of events to the store.', 'counter', () => [
      { labels: {}, value: this.src.ingest().commits },
    ]);
    add(
      'vesper_ingest_commit_failures_total',
      'Group commits that failed (the records are not acknowledged and come again).',
      'counter',
      () => [{ labels: {}, value: this.src.ingest().failures }],
    );
    add(
      'vesper_events_duplicate_total',
      'Records the store already held (resent by an agent): not stored or published again.',
      'counter',
      () => [{ labels: {}, value: this.src.ingest().duplicates }],
    );
    add('vesper_actions_total', 'Actions run by filters, by action and result (ok, failed, rate_limited).', 'counter', () =>
      [...this.actions.values()].map((a) => ({ labels: { action: a.action, result: a.result }, value: a.count })),
    );
    add('vesper_store_size_bytes', 'Live bytes of the event store (what store.retention.max_size limits).', 'gauge', () => [
      { labels: {}, value: this.src.storeBytes() },
    ]);
    add('vesper_store_limit_bytes', "The event store's size limit, store.retention.max_size.", 'gauge', () => [
      { labels: {}, value: this.src.storeLimitBytes() },
    ]);
    add('vesper_retention_deleted_events_total', 'Events deleted by retention (age or size).', 'counter', () => [
      { labels: {}, value: this.retentionDeleted },
    ]);
    add('vesper_sink_backlog_events', 'Stored events an export sink has not delivered yet, by sink.', 'gauge', () =>
      [...(this.src.sinks?.() ?? [])].map((s) => ({ labels: { sink: s.name, kind: s.kind }, value: s.backlog })),
    );
    add('vesper_sink_delivered_events_total', 'Events an export sink delivered, by sink.', 'counter', () =>
      [...(this.src.sinks?.() ?? [])].map((s) => ({ labels: { sink: s.name, kind: s.kind }, value: s.delivered })),
    );
    add('vesper_sink_failures_total', 'Failed delivery attempts of an export sink (retried), by sink.', 'counter', () =>
      [...(this.src.sinks?.() ?? [])].map((s) => ({ labels: { sink: s.name, kind: s.kind }, value: s.failures })),
    );
    r.registerMetric(this.latency as never);
  }

  /** An action's outcome (the action runner's onResult). */
  actionDone(action: string, ok: boolean, code?: string): void {
    const result = ok ? 'ok' : code === ErrorCode.ACTION_RATE_LIMITED ? 'rate_limited' : 'failed';
    const key = `${action}\0${result}`;
    const a = this.actions.get(key);
    if (a) a.count++;
    else this.actions.set(key, { action, result, count: 1 });
  }

  retentionDeletedAdd(n: number): void {
    this.retentionDeleted += n;
  }

  /** The text Prometheus scrapes. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Serves GET /metrics on `listen` (nothing for off). */
  async listen(l: MetricsListen): Promise<void> {
    if (l.kind === 'off') return;
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/metrics' && !req.url?.startsWith('/metrics?'))) {
        res
          .writeHead(req.url === '/' ? 200 : 404, { 'content-type': 'text/plain' })
          .end(req.url === '/' ? 'vesperd: metrics at /metrics\n' : 'not found\n');
        return;
      }
      this.text().then(
        (t) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(t),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    });
    server.keepAliveTimeout = 65_000; // Prometheus keeps its scrape connection
    if (l.kind === 'unix' && existsSync(l.path) && lstatSync(l.path).isSocket()) unlinkSync(l.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new VesperError(
            ErrorCode.CONFIG_INVALID,
            `metrics.listen ${l.kind === 'unix' ? l.path : `${l.host}:${l.port}`}: cannot listen: ${err.code ?? err.message}`,
            '',
            { cause: err },
          ),
        ),
      );
      if (l.kind === 'unix') server.listen(l.path, resolve);
      else server.listen(l.port, l.host, resolve);
    });
    if (l.kind === 'unix') chmodSync(l.path, 0o660);
    server.unref();
    this.server = server;
    const a = server.address();
    this.where = typeof a === 'string' ? a : a ? `${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}` : '';
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
