// vesperd's metrics as Prometheus reads them: the events counted by the framework's tally, the
// latency histogram's cumulative buckets, actions by result, links, store and build info, in
// a text that `promtool check metrics` (Debian's prometheus package) finds no fault with; and
// the shipped alert rules, which `promtool check rules` must accept.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Metrics, type LinkReading } from '../../host/metrics/metrics.js';
import { LATENCY_BUCKETS } from '../../host/metrics/latency.js';
import { NotificationFramework } from '../../host/notify/framework.js';
import { FilterTable } from '../../host/notify/filter.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { ErrorCode } from '../../proto/errors.js';

const RULES = resolve(import.meta.dirname, '../../host/metrics/vesper.rules.yml');
const OPERATIONS = resolve(import.meta.dirname, '../../docs/operations.md');
const amtool = spawnSync('amtool', ['--version']).status === 0;
const promtool = spawnSync('promtool', ['--version']).status === 0;
const NO_PROMTOOL = 'promtool missing (Debian package prometheus; scripts/ensure-deps.sh installs it)';
if (!promtool) console.warn(`SKIP promtool checks: ${NO_PROMTOOL}`);

const ev = (vm: string, plugin: string, event: string): VesperEvent => ({
  vm,
  plugin,
  instance: 0,
  event,
  guestTimeUs: null,
  hostTimeUs: Date.now() * 1000,
  source: null,
  payload: {},
});

function metricsWith(links: LinkReading[] = []): Metrics {
  return new Metrics({
    links: () => links,
    storeBytes: () => 900,
    storeLimitBytes: () => 1000,
    ingest: () => ({ commits: 7, failures: 1, duplicates: 2, unregisteredPlugin: 0 }),
    sinks: () => [{ name: 'hook', kind: 'webhook', backlog: 12, delivered: 30, failures: 3 }],
  });
}

/** The sample lines of a metric (name and labels as written), value parsed. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of text.split('\n'))
    if (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) {
      const i = l.lastIndexOf(' ');
      out.set(l.slice(0, i), Number(l.slice(i + 1)));
    }
  return out;
}

describe('metrics', () => {
  it('counts stored events by vm, plugin, event and disposition, as the filter decided', async () => {
    const m = metricsWith();
    const filters = new FilterTable();
    filters.set({ vm: '*', plugin: 'heartbeat', instance: '*', event: '*', decision: { kind: 'discard' } });
    const fw = new NotificationFramework({ filters, tally: m.tally });
    fw.ingest([ev('a', 'signal', 'signal'), ev('a', 'signal', 'signal'), ev('a', 'heartbeat', 'beat'), ev('b', 'signal', 'signal')]);
    fw.ingest([ev('b', 'signal', 'signal')]);
    const s = samples(await m.text(), 'vesper_events_total');
    expect(Object.fromEntries(s)).toEqual({
      'vesper_events_total{vm="a",plugin="signal",event="signal",disposition="notify"}': 2,
      'vesper_events_total{vm="a",plugin="heartbeat",event="beat",disposition="discard"}': 1,
      'vesper_events_total{vm="b",plugin="signal",event="signal",disposition="notify"}': 2,
    });
  });

  it('keeps latency in cumulative buckets with sum and count per plugin', async () => {
    const m = metricsWith();
    for (const s of [0.0005, 0.003, 0.003, 0.2, 30]) m.latency.observe('signal', s);
    m.latency.observe('oom', 0.02);
    const t = await m.text();
    const b = samples(t, 'vesper_detection_latency_seconds_bucket');
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="signal",le="0.001"}')).toBe(1);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="signal",le="0.005"}')).toBe(3);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="signal",le="0.25"}')).toBe(4);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="signal",le="10"}')).toBe(4);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="signal",le="+Inf"}')).toBe(5);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="oom",le="0.01"}')).toBe(0);
    expect(b.get('vesper_detection_latency_seconds_bucket{plugin="oom",le="0.025"}')).toBe(1);
    expect([...b.keys()].filter((k) => k.includes('plugin="signal"'))).toHaveLength(LATENCY_BUCKETS.length + 1);
    expect(samples(t, 'vesper_detection_latency_seconds_count').get('vesper_detection_latency_seconds_count{plugin="signal"}')).toBe(5);
    expect(samples(t, 'vesper_detection_latency_seconds_sum').get('vesper_detection_latency_seconds_sum{plugin="signal"}')).toBeCloseTo(
      30.2065,
      6,
    );
  });

  it('reads links, losses, throttling, actions, store, sinks and build info', async () => {
    const m = metricsWith([
      { vm: 'a', transport: 'virtio', up: true, lostAgent: 5, lostEndedRun: 0, throttles: 2, throttledMs: 1500 },
      { vm: 'b', transport: 'ssh', up: false, lostAgent: 0, lostEndedRun: 9, throttles: 0, throttledMs: 0 },
    ]);
    m.actionDone('exec', true);
    m.actionDone('exec', false, ErrorCode.ACTION_RATE_LIMITED);
    m.actionDone('restart', false, ErrorCode.ACTION_FAILED);
    m.retentionDeletedAdd(40);
    const t = await m.text();
    expect(Object.fromEntries(samples(t, 'vesper_link_up'))).toEqual({
      'vesper_link_up{vm="a",transport="virtio"}': 1,
      'vesper_link_up{vm="b",transport="ssh"}': 0,
    });
    expect(samples(t, 'vesper_records_lost_total').get('vesper_records_lost_total{vm="b",source="ended_run"}')).toBe(9);
    expect(samples(t, 'vesper_records_lost_total').get('vesper_records_lost_total{vm="a",source="agent_ring"}')).toBe(5);
    expect(samples(t, 'vesper_ingest_throttled_seconds_total').get('vesper_ingest_throttled_seconds_total{vm="a"}')).toBe(1.5);
    expect(Object.fromEntries(samples(t, 'vesper_actions_total'))).toEqual({
      'vesper_actions_total{action="exec",result="ok"}': 1,
      'vesper_actions_total{action="exec",result="rate_limited"}': 1,
      'vesper_actions_total{action="restart",result="failed"}': 1,
    });
    expect(samples(t, 'vesper_store_size_bytes').get('vesper_store_size_bytes')).toBe(900);
    expect(samples(t, 'vesper_retention_deleted_events_total').get('vesper_retention_deleted_events_total')).toBe(40);
    expect(samples(t, 'vesper_sink_backlog_events').get('vesper_sink_backlog_events{sink="hook",kind="webhook"}')).toBe(12);
    expect(t).toMatch(/^vesper_build_info\{version="[^"]+",node="[^"]+"\} 1$/m);
    expect(t).toContain('# TYPE vesper_events_total counter');
    expect(t).toContain('# TYPE vesper_detection_latency_seconds histogram');
  });

  it.skipIf(!promtool)("is a text promtool check metrics finds no fault with (but prom-client's own Node.js gauges)", async () => {
    const m = metricsWith([{ vm: 'a', transport: 'virtio', up: true, lostAgent: 1, lostEndedRun: 0, throttles: 0, throttledMs: 0 }]);
    new NotificationFramework({ tally: m.tally }).ingest([ev('a', 'signal', 'signal')]);
    m.latency.observe('signal', 0.004);
    m.actionDone('exec', true);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: await m.text(), encoding: 'utf8' });
    // prom-client's default Node.js gauges are named *_total by the library itself; ours must be clean
    const faults = `${r.stdout}${r.stderr}`
      .split('\n')
      .filter((l) => l.trim() && !/^vesper_nodejs_active_(handles|requests|resources)_total non-counter/.test(l));
    expect(faults).toEqual([]);
  });

  it.skipIf(!promtool)(
    'ships alert rules promtool check rules accepts: agent lost, records lost, sink backlog, store near its limit',
    () => {
      const out = execFileSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
      expect(out).toContain('SUCCESS');
      for (const alert of ['VesperAgentLost', 'VesperRecordsLost', 'VesperSinkBacklog', 'VesperStoreNearLimit'])
        expect(execFileSync('grep', ['-c', `alert: ${alert}$`, RULES], { encoding: 'utf8' }).trim()).toBe('1');
    },
  );

  it.skipIf(!amtool)('documents an Alertmanager route that amtool check-config accepts (Debian prometheus-alertmanager)', () => {
    const doc = readFileSync(OPERATIONS, 'utf8');
    const at = doc.indexOf('# alertmanager.yml');
    expect(at).toBeGreaterThan(0);
    const dir = mkdtempSync(join(tmpdir(), 'vesper-am-'));
    try {
      writeFileSync(join(dir, 'alertmanager.yml'), doc.slice(at, doc.indexOf('```', at)));
      expect(execFileSync('amtool', ['check-config', join(dir, 'alertmanager.yml')], { encoding: 'utf8' })).toContain('SUCCESS');
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
