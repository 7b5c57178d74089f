import { describe, expect, it } from 'vitest';
import { renderHtml } from '../../host/analysis/report-html.js';
import type { Analysis, TimelineEntry, Verdict } from '../../host/analysis/types.js';
import { fetchesAndScripts, visibleText } from '../helpers/chromium.js';

const T0 = Date.UTC(2026, 10, 22, 10, 31, 0) * 1000; // µs
const RUN = 'b3f1c2d4-boot.1763807400';
const HOSTILE = `<script>alert("x")</script> & 'q'`;

function guest(
  id: number,
  atMs: number,
  plugin: string,
  event: string,
  description: string,
  payload: Record<string, unknown>,
): TimelineEntry {
  const timeUs = T0 + atMs * 1000;
  return {
    id,
    timeUs,
    guestTimeUs: timeUs - 40_000,
    hostTimeUs: timeUs + 800,
    clock: 'guest',
    agentRun: RUN,
    plugin,
    instance: 0,
    event,
    description,
    payload,
  };
}

function host(
  id: number,
  atMs: number,
  plugin: string,
  event: string,
  description: string,
  payload: Record<string, unknown>,
): TimelineEntry {
  const timeUs = T0 + atMs * 1000;
  return {
    id,
    timeUs,
    guestTimeUs: null,
    hostTimeUs: timeUs,
    clock: 'host',
    agentRun: null,
    plugin,
    instance: 0,
    event,
    description,
    payload,
  };
}

function analysis(over: Partial<Analysis> = {}): Analysis {
  const timeline: TimelineEntry[] = [
    guest(101, 1000, 'heartbeat', 'beat', 'heartbeat 17', { heartbeat: { count: 17, intervalMs: 1000, delayMs: 0.2 } }),
    guest(102, 2000, 'process', 'exec', 'exec /usr/sbin/vesper-demo-svc as 312', {
      exec: { task: { pid: 312, comm: 'vesper-demo-svc' }, filename: '/usr/sbin/vesper-demo-svc' },
    }),
    guest(103, 4000, 'signal', 'signal', 'signal SIGSEGV to 312 (vesper-demo-svc) from the kernel (fault)', {
      signal: {
        sig: 11,
        code: 1,
        target: { pid: 312, comm: 'vesper-demo-svc' },
        sender: { pid: 312, comm: 'vesper-demo-svc' },
        senderIsKernel: true,
      },
      monoNs: 5_000_000,
    }),
    guest(104, 4001, 'process', 'exit', 'exit of 312 (vesper-demo-svc): killed by SIGSEGV', {
      exit: { task: { pid: 312, comm: 'vesper-demo-svc' }, signal: 11, exitCode: 0, codeKnown: true },
    }),
    guest(105, 5000, 'process', 'exec', `exec /tmp/x as 400 (${HOSTILE})`, {
      exec: { task: { pid: 400, comm: HOSTILE }, filename: '/tmp/x' },
    }),
    host(106, 6000, 'action', 'done', 'pacemaker-fail done for event #103', { action: 'pacemaker-fail', ok: true }),
    host(107, 7000, 'libvirt', 'stopped', 'domain stopped (Destroyed)', { libvirtEvent: 'lifecycle', reason: 'Destroyed' }),
    host(108, 7100, 'channel', 'agent-lost', 'the link to the agent broke', { why: 'EOF' }),
    host(109, 9000, 'pacemaker', 'resource-started', 'Pacemaker started vm-test on node1', { task: 'start', node: 'node1' }),
  ];
  const verdicts: Verdict[] = [
    {
      kind: 'app-crash',
      scope: 'service',
      confidence: 'confident',
      summary: 'vesper-demo-svc (pid 312) crashed: SIGSEGV raised by the kernel after a memory fault.',
      evidence: [103, 104],
      atUs: T0 + 4_000_000,
      details: { signal: 'SIGSEGV', pid: 312, comm: 'vesper-demo-svc' },
    },
    {
      kind: 'guest-hang',
      scope: 'guest',
      confidence: 'uncertain',
      summary: 'Heartbeats stopped for 3 s while the domain ran; nothing else says why.',
      evidence: [101],
      atUs: T0 + 1_000_000,
    },
  ];
  return {
    version: 1,
    vm: 'vm-test',
    generatedAtUs: T0 + 60_000_000,
    window: { fromUs: T0, toUs: T0 + 10_000_000 },
    anchor: { mode: 'last', atUs: T0 + 4_000_000, eventId: 103 },
    timeline,
    verdicts,
    clocks: {
      method: 'min-transit',
      note: 'Guest times are shifted by the smallest host-minus-guest difference seen in the run.',
      runs: [{ agentRun: RUN, offsetUs: 40_800, records: 5, spreadUs: 900, firstUs: T0 + 1_000_000, lastUs: T0 + 5_000_000 }],
    },
    eventCount: timeline.length + 8,
    omitted: { heartbeats: 8, distant: 0 },
    ...over,
  };
}

const svgOf = (html: string): string => html.slice(html.indexOf('<svg'), html.indexOf('</svg>') + 6);
const count = (s: string, re: RegExp): number => s.match(re)?.length ?? 0;

describe('renderHtml', () => {
  it('puts the verdicts first, then one SVG timeline, then the evidence and the full timeline table', () => {
    const a = analysis();
    const html = renderHtml(a);
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    const text = visibleText(html);
    expect(text).toContain(a.verdicts[0]!.summary);
    expect(text).toContain('Application crash');
    expect(text).toContain('scope: one service');
    expect(count(html, /<svg\b/g)).toBe(1);
    expect(count(html, /<\/svg>/g)).toBe(1);
    const at = (s: string): number => html.indexOf(s);
    expect(at('id="verdicts"')).toBeGreaterThan(0);
    expect(at('id="verdicts"')).toBeLessThan(at('<svg'));
    expect(at('</svg>')).toBeLessThan(at('id="evidence"'));
    expect(at('id="evidence"')).toBeLessThan(at('id="timeline"'));
    // every entry in the table, with its description
    for (const e of a.timeline) expect(html).toContain(`<tr id="ev-${e.id}"`);
    expect(text).toContain('exit of 312 (vesper-demo-svc): killed by SIGSEGV');
    expect(text).toContain(a.clocks.note);
  });

  it('draws a mark for every timeline entry, in one lane per source', () => {
    const a = analysis();
    const svg = svgOf(renderHtml(a));
    const ids = [...svg.matchAll(/<g class="mark[^"]*" data-id="(\d+)"/g)].map((m) => Number(m[1])).sort();
    expect(ids).toEqual(a.timeline.map((e) => e.id).sort());
    const lanes = [...svg.matchAll(/data-lane="([^"]+)"/g)].map((m) => m[1]);
    expect(lanes).toEqual(['g:process', 'g:signal', 'g:heartbeat', 'h:libvirt', 'h:channel', 'h:pacemaker', 'h:action']);
    // short captions on the marks, from the records
    expect(svg).toContain('>SIGSEGV vesper-demo-svc</text>');
    expect(svg).toContain('>exit SIGSEGV vesper-demo-svc</text>');
    expect(svg).toContain('>done pacemaker-fail</text>');
    // a time axis on the host clock
    expect(svg).toMatch(/class="tick-label"[^>]*>10:31:0\d<\/text>/);
  });

  it("highlights the verdicts' evidence in the SVG, the evidence list and the table", () => {
    const html = renderHtml(analysis());
    const svg = svgOf(html);
    const evidenceMarks = [...svg.matchAll(/<g class="mark evidence" data-id="(\d+)"/g)].map((m) => Number(m[1])).sort();
    expect(evidenceMarks).toEqual([101, 103, 104]);
    expect(count(svg, /class="ring"/g)).toBe(3);
    const evidenceRows = [...html.matchAll(/<tr id="ev-(\d+)" class="evidence">/g)].map((m) => Number(m[1])).sort();
    expect(evidenceRows).toEqual([101, 103, 104]);
    const list = html.slice(html.indexOf('id="evidence"'), html.indexOf('id="timeline"'));
    expect(list).toContain('<a href="#ev-103">#103</a>');
    expect(list).toContain('<a href="#ev-104">#104</a>');
  });

  it('also highlights entries flagged as evidence, and names evidence ids missing from the timeline', () => {
    const a = analysis();
    a.timeline.find((e) => e.id === 107)!.evidence = true;
    a.verdicts[0]!.evidence.push(999);
    const html = renderHtml(a);
    expect(svgOf(html)).toContain('<g class="mark evidence" data-id="107">');
    expect(visibleText(html)).toContain('#999 (not in the timeline)');
  });

  it('marks uncertain verdicts visibly, and only those', () => {
    const html = renderHtml(analysis());
    const cards = [...html.matchAll(/<article class="([^"]+)"[^>]*>([\s\S]*?)<\/article>/g)];
    expect(cards).toHaveLength(2);
    expect(cards[0]![1]).toBe('verdict confident');
    expect(cards[0]![2]).not.toContain('UNCERTAIN');
    expect(cards[1]![1]).toBe('verdict uncertain');
    expect(cards[1]![2]).toContain('UNCERTAIN');
    expect(svgOf(html)).toContain('<g class="vline uncertain">');
    expect(svgOf(html)).toContain('V2 guest-hang (uncertain)');
  });

  it('escapes every string from events: markup, quotes and ampersands stay text', () => {
    const a = analysis({ vm: `vm"<b>&` });
    a.verdicts[0]!.summary = `${HOSTILE} crashed`;
    a.verdicts[0]!.details = { comm: HOSTILE, [HOSTILE]: 1 };
    a.clocks.runs[0]!.agentRun = HOSTILE;
    a.clocks.note = HOSTILE;
    const html = renderHtml(a);
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toContain('"x"');
    expect(html).not.toContain("'q'");
    expect(html).not.toMatch(/&(?!amp;|lt;|gt;|quot;|#39;|#x?[0-9a-f]+;)/i);
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;');
    expect(fetchesAndScripts(html)).toEqual([]);
    const text = visibleText(html);
    expect(text).toContain(`${HOSTILE} crashed`);
    expect(text).toContain(`vesper analysis: vm “vm"<b>&”`);
    // the hostile comm reaches the mark's caption too, truncated and escaped
    expect(svgOf(html)).toContain('>exec &lt;script&gt;alert(&quot;x&quot;)&lt;/scri…</text>');
  });

  it('shows control and bidirectional-override characters instead of obeying them', () => {
    const a = analysis();
    a.timeline[1]!.description = 'exec \u202egpj.exe\u202c and \u001b[31mred';
    const html = renderHtml(a);
    for (const c of ['\u202e', '\u202c', '\u001b']) expect(html).not.toContain(c);
    expect(visibleText(html)).toContain('exec \\u202egpj.exe\\u202c and \\u001b[31mred');
  });

  it('fetches nothing: no URLs, no src, no style sheets or fonts from elsewhere, no script', () => {
    const html = renderHtml(analysis());
    expect(html).not.toMatch(/https?:\/\//);
    expect(html).not.toMatch(/\ssrc\s*=/i);
    expect(html).not.toMatch(/<link\b|@import|url\s*\(|<script\b|@font-face/i);
    expect(html).toContain(`<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">`);
    expect(fetchesAndScripts(html)).toEqual([]);
  });

  it('gives the same bytes for the same input and leaves the input alone', () => {
    const a = analysis();
    a.timeline.reverse();
    const before = structuredClone(a);
    const html = renderHtml(a);
    expect(a).toEqual(before);
    expect(renderHtml(structuredClone(a))).toBe(html);
  });

  it('says what the timeline leaves out', () => {
    const text = visibleText(renderHtml(analysis({ truncated: true })));
    expect(text).toContain(
      '9 of 17 events analysed are shown; left out: 8 routine heartbeats (only those at the edges of a gap are shown).',
    );
    expect(text).toContain('its earliest were not read');
    expect(visibleText(renderHtml(analysis()))).not.toContain('not read');
  });

  it('says so when nothing failure-like is in the window', () => {
    const html = renderHtml(analysis({ verdicts: [], timeline: [], eventCount: 0, omitted: { heartbeats: 0, distant: 0 } }));
    expect(visibleText(html)).toContain('No failure-like event in this window.');
    expect(count(html, /<svg\b/g)).toBe(1);
    expect(svgOf(html)).toContain('no events in this window');
  });

  it('keeps every mark and the evidence captions when marks crowd a lane', () => {
    const a = analysis();
    const beats = Array.from({ length: 300 }, (_, i) =>
      guest(1000 + i, 3000 + i * 5, 'heartbeat', 'beat', `heartbeat ${i}`, { heartbeat: { count: i, intervalMs: 5, delayMs: 0 } }),
    );
    a.timeline.push(...beats);
    a.verdicts[1]!.evidence = [1150];
    const svg = svgOf(renderHtml(a));
    expect(count(svg, /<g class="mark/g)).toBe(a.timeline.length);
    expect(svg).toMatch(
      /<g class="mark evidence" data-id="1150"><title>[^<]*<\/title><circle class="ring"[^>]*\/><circle[^>]*\/><text class="label"/,
    );
    // labels that do not fit are left out rather than drawn over each other
    expect(count(svg, /class="label"/g)).toBeLessThan(a.timeline.length);
  });
});
