// The timeline: guest records put on the host clock per agent run (a guest clock off by
// seconds), host events as stored, one order; routine heartbeats thinned; the text and JSON forms.
import { describe, expect, it } from 'vitest';
import { analysisJson, analyze, windowAround } from '../../host/analysis/analyze.js';
import { analysisText } from '../../host/analysis/text.js';
import { describe as describeEvent, placeEvents, reconcileClocks } from '../../host/analysis/timeline.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { DEMO, Scenario } from '../helpers/analysis-scenario.js';

function analyseAll(events: VesperEvent[], anchor: VesperEvent, maxEntries?: number) {
  return analyze(events, {
    vm: 'web1',
    window: windowAround(anchor.hostTimeUs),
    anchor: { mode: 'last', atUs: anchor.hostTimeUs, eventId: anchor.id ?? null },
    nowUs: 1,
    maxEntries,
  });
}

describe('clock reconciliation', () => {
  it('puts a guest whose clock is 5 s ahead back on the host clock, in order with libvirt', () => {
    const s = new Scenario();
    s.skewUs = 5_000_000; // the guest's wall clock runs 5 s ahead
    s.heartbeats(0, 60_000); // transit 2 ms each
    // A signal record that waited 300 ms in the agent's batch before it was sent.
    const sig = s.guest(
      30_000,
      'signal',
      'signal',
      {
        signal: { sig: 11, code: 1, result: 0, target: DEMO, sender: DEMO, senderIsKernel: true },
      },
      { transitUs: 300_000 },
    );
    const lv = s.libvirt(30_100, 'watchdog', { action: 'none' });
    const events = s.done();
    const { clocks, offsets } = reconcileClocks(events);
    expect(clocks.method).toBe('min-transit');
    expect(clocks.runs).toHaveLength(1);
    expect(clocks.runs[0]).toMatchObject({ agentRun: 'boot-a/300', offsetUs: 2000 - 5_000_000, records: 61, spreadUs: 298_000 });
    expect(clocks.note).toMatch(/smallest/);
    const placed = placeEvents(events, offsets);
    const p = placed.find((x) => x.id === sig.id)!;
    expect(p.clock).toBe('guest');
    expect(p.timeUs).toBe(s.at(30_000) + 2000); // its true time, late by the shortest transit only
    // On the guest's clock it would come 5 s after the watchdog; on the host's it is just before.
    expect(placed.findIndex((x) => x.id === sig.id)).toBeLessThan(placed.findIndex((x) => x.id === lv.id));
    // Its own hostTimeUs (30.3 s) would also have put it after the watchdog (30.1 s).
    expect(sig.hostTimeUs).toBeGreaterThan(lv.hostTimeUs);
  });

  it('reconciles each agent run on its own (a reboot may set the clock anew)', () => {
    const s = new Scenario();
    s.skewUs = -3_000_000;
    s.heartbeats(0, 10_000);
    s.run = 'boot-b/200';
    s.skewUs = 7_000_000;
    s.heartbeats(20_000, 30_000);
    const events = s.done();
    const { clocks, offsets } = reconcileClocks(events);
    expect(Object.fromEntries(offsets)).toEqual({ 'boot-a/300': 3_002_000, 'boot-b/200': -6_998_000 });
    expect(clocks.runs.map((r) => r.agentRun)).toEqual(['boot-a/300', 'boot-b/200']);
    const placed = placeEvents(events, offsets);
    for (let i = 1; i < placed.length; i++) expect(placed[i]!.timeUs).toBeGreaterThanOrEqual(placed[i - 1]!.timeUs);
    expect(placed[0]!.timeUs).toBe(s.at(0) + 2000);
    expect(placed.at(-1)!.timeUs).toBe(s.at(29_000) + 2000);
  });

  it('the analysis carries the reconciled and the original times of each entry', () => {
    const s = new Scenario();
    s.skewUs = 2_500_000;
    s.heartbeats(0, 5000);
    const sig = s.signal(3000, 11, DEMO, DEMO, { code: 1 });
    const a = analyseAll(s.done(), sig);
    const e = a.timeline.find((x) => x.id === sig.id)!;
    expect(e).toMatchObject({ clock: 'guest', agentRun: 'boot-a/300', guestTimeUs: s.at(3000) + 2_500_000, hostTimeUs: s.at(3000) + 2000 });
    expect(e.timeUs).toBe(s.at(3000) + 2000);
    expect(e.evidence).toBe(true);
    expect(a.clocks.runs[0]!.offsetUs).toBe(2000 - 2_500_000);
  });
});

describe('the timeline', () => {
  it('keeps heartbeats only at the edges of a gap and says how many it left out', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    const lost = s.channel(33_000, 'heartbeat-lost', { silentMs: 3000, intervalMs: 1000 });
    s.heartbeats(40_000, 60_000);
    const a = analyseAll(s.done(), lost);
    const beats = a.timeline.filter((e) => e.plugin === 'heartbeat');
    // first, last before the gap, first after it, last
    expect(beats.map((e) => Math.round((e.timeUs - s.at(0)) / 1000))).toEqual([2, 29_002, 40_002, 59_002]);
    expect(a.omitted).toEqual({ heartbeats: 46, distant: 0 });
    expect(a.eventCount).toBe(51);
  });

  it('a busy window keeps the evidence and the events nearest the failure', () => {
    const s = new Scenario();
    for (let i = 0; i < 300; i++) s.exec(i * 100, { pid: 2000 + i, comm: 'worker' });
    const sig = s.signal(1000, 11, DEMO, DEMO, { code: 1 });
    const a = analyseAll(s.done(), sig, 50);
    expect(a.timeline).toHaveLength(50);
    expect(a.timeline.some((e) => e.id === sig.id && e.evidence)).toBe(true);
    expect(a.omitted?.distant).toBe(251);
    const times = a.timeline.map((e) => e.timeUs);
    expect(Math.max(...times) - Math.min(...times)).toBeLessThan(6_000_000);
  });

  it('describes events in one line', () => {
    const s = new Scenario();
    const d = (e: VesperEvent): string => describeEvent(e);
    expect(d(s.signal(0, 11, DEMO, DEMO, { code: 1 }))).toBe(
      'SIGSEGV to 812 (vesper-demo-svc) from the kernel (fault in 812 (vesper-demo-svc), code 1)',
    );
    expect(d(s.signal(0, 15, DEMO, { pid: 9, comm: 'kill' }))).toBe('SIGTERM to 812 (vesper-demo-svc) from 9 (kill)');
    expect(d(s.exit(0, DEMO, { signal: 11 }))).toBe('812 (vesper-demo-svc) [/usr/sbin/vesper-demo-svc] was killed by SIGSEGV');
    expect(d(s.exit(0, DEMO, { code: 3 }))).toBe('812 (vesper-demo-svc) [/usr/sbin/vesper-demo-svc] exited with code 3');
    expect(d(s.oom(0, { pid: 900, comm: 'tail' }))).toMatch(
      /^OOM killer killed 900 \(tail\): 32 MiB resident .*cgroup \/vesper-oom, CONSTRAINT_MEMCG$/,
    );
    expect(d(s.psi(0))).toBe('memory pressure (some): 150 ms stalled in 1.0 s (threshold 100 ms), avg10 4.2');
    expect(d(s.libvirt(0, 'panicked', { event: 'Crashed', reason: 'Panicked' }))).toBe(
      'libvirt: the guest kernel panicked (Crashed Panicked)',
    );
    expect(d(s.channel(0, 'heartbeat-lost', { silentMs: 3000, intervalMs: 1000 }))).toBe('no heartbeat for 3.0 s (interval 1000 ms)');
    expect(d(s.channel(0, 'agent-connected', { agentPid: 420, bootId: 'abcdef0123', agentRestarted: true }))).toBe(
      'agent connected: pid 420, boot abcdef01, a new agent run',
    );
    expect(
      d(
        s.host(0, 'action', 'failed', {
          action: 'restart',
          ok: false,
          error: 'VSP_LIBVIRT_CALL',
          cause: { id: 5, plugin: 'signal', event: 'signal' },
        }),
      ),
    ).toBe('action restart failed for event 5 (signal signal): VSP_LIBVIRT_CALL');
    expect(d(s.guest(0, 'channel', 'records-lost', { loss: { source: 1, count: 17 } }))).toBe(
      "the agent lost 17 records: the kernel's trace buffer overflowed",
    );
  });

  it('text: verdicts first with their evidence lines, then the timeline, then the clocks', () => {
    const s = new Scenario();
    s.heartbeats(0, 10_000);
    const sig = s.signal(5000, 11, DEMO, DEMO, { code: 1 });
    const a = analyseAll(s.done(), sig);
    const t = analysisText(a);
    const v = t.indexOf('VERDICTS');
    const tl = t.indexOf('TIMELINE');
    const c = t.indexOf('CLOCKS');
    expect(v).toBeGreaterThan(0);
    expect(v).toBeLessThan(tl);
    expect(tl).toBeLessThan(c);
    expect(t).toContain('1. app-crash (service, confident)');
    const evidence = t.slice(v, tl);
    expect(evidence).toContain(`#${sig.id}`);
    expect(evidence).toContain('signal/signal');
    expect(t).toMatch(/\* \d\d:\d\d:\d\d\.\d{3} {2}#\d+ +signal\/signal/);
    expect(t).toContain('agent run boot-a/300: guest time + 2.000 ms = host time');
  });

  it('JSON that would not fit one API frame drops the entries farthest from the failure, never the evidence', () => {
    const s = new Scenario();
    for (let i = 0; i < 400; i++) s.exec(i * 100, { pid: 2000 + i, comm: 'x'.repeat(200) });
    const sig = s.signal(20_000, 11, DEMO, DEMO, { code: 1 });
    const a = analyseAll(s.done(), sig);
    const full = JSON.stringify(a).length;
    const text = analysisJson(a, Math.floor(full / 3));
    expect(text.length).toBeLessThanOrEqual(Math.floor(full / 3));
    const b = JSON.parse(text) as typeof a;
    expect(b.timeline.some((e) => e.id === sig.id)).toBe(true);
    expect(b.omitted!.distant).toBeGreaterThan(0);
    expect(analysisJson(a, full + 10)).toBe(JSON.stringify(a));
  });
});
