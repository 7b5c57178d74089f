// `vesper analyze -o html`: one VM's failure window as a single self-contained HTML page, the
// verdicts first, then an SVG timeline of the window with one lane per source, then the evidence
// and every event of the window. An operator opens it from a mail or a ticket, often on a machine
// without access to anything else, so the page fetches nothing (no fonts, styles, scripts or
// images: a Content-Security-Policy forbids all of it) and needs no JavaScript.
//
// Much of what is shown comes from the guest (process names, file names, kprobe arguments) and
// a compromised guest chooses it: every such string goes through esc(), which also makes control
// and bidirectional-override characters visible so a name cannot hide or reorder what follows it.
// The same Analysis always gives the same bytes: no clock, locale or random input is read here.
import { signalName as nameOfSignal } from './timeline.js';
import type { Analysis, TimelineEntry, Verdict, VerdictKind, VerdictScope } from './types.js';

const KIND_TITLES: Record<VerdictKind, string> = {
  'app-crash': 'Application crash',
  'app-killed': 'Application killed or stopped by another process',
  'planned-stop': 'Stopped by the guest’s shutdown (planned)',
  oom: 'Out of memory: the OOM killer chose a victim',
  'guest-panic': 'Guest kernel panic',
  'guest-hang': 'Guest hang',
  'agent-fault': 'Agent fault',
  'io-error': 'I/O error',
  'channel-loss': 'Channel to the guest lost',
  'guest-stopped': 'Guest stopped',
  'host-paused': 'Stopped by the host (pause, save, snapshot, migration)',
  unknown: 'Failure of unknown kind',
};

const SCOPE_TITLES: Record<VerdictScope, string> = {
  service: 'one service',
  guest: 'the whole guest',
  host: 'the host',
};

// Lanes top to bottom: what the guest saw, then what the host saw of it, in the order an
// operator reads a failure (kernel events, the hypervisor, the link, the cluster, our reaction).
const GUEST_LANE_ORDER = ['process', 'signal', 'oom', 'psi', 'kprobe', 'heartbeat'];
const HOST_LANE_ORDER = ['libvirt', 'channel', 'pacemaker', 'action'];
const HOST_LANE_CLASSES: Record<string, string> = {
  libvirt: 'l-libvirt',
  channel: 'l-channel',
  pacemaker: 'l-pacemaker',
  action: 'l-action',
};

// SVG geometry (user units; the SVG scales to the page width).
const SVG_W = 1340;
const GUTTER = 150; // lane titles
const RIGHT = 36; // room for the last tick's time, centred on it
const PLOT_W = SVG_W - GUTTER - RIGHT;
const VERDICT_ROW_H = 13; // verdict markers' captions above the lanes, one row each
const AXIS_H = 44;
const MARK_Y = 12; // within a lane
const LABEL_Y0 = 31; // first caption row's baseline, clear of an evidence mark's ring
const ROW_H = 13;
const MAX_LABEL_ROWS = 4;
const LABEL_CHAR_W = 6.8; // 11 px DejaVu Sans and the like, generous so estimated boxes do not touch
const LABEL_GAP = 6;
const MAX_LABEL_CHARS = 30;
const DAY_US = 86_400_000_000;

// Characters that would otherwise render as nothing, break a line, or reorder the text around
// them (U+202E turns "gpj.exe" into "exe.jpg"). C1 controls included: some fonts draw nothing.
// eslint-disable-next-line no-control-regex
const INVISIBLE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
const HTML_SPECIAL: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text for HTML content and attribute values alike. */
function esc(value: unknown): string {
  return String(value)
    .replace(INVISIBLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    .replace(/[&<>"']/g, (c) => HTML_SPECIAL[c]!);
}

function json(value: unknown, indent?: number): string {
  // bigint is not JSON; a payload holding one (a 64-bit counter decoded as such) still prints.
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), indent) ?? 'null';
}

function truncate(s: string, max: number): string {
  if (s.length <= max) return s;
  // by code point: a cut through a surrogate pair would print as U+FFFD
  return `${Array.from(s)
    .slice(0, max - 1)
    .join('')}…`;
}

// ------------------------------------------------------------------------------------------ times

// Date's range; a garbled time prints as '?' rather than throwing the whole report away.
const MAX_TIME_US = 8.64e18;

/** HH:MM:SS[.fff[fff]] on the host clock, UTC. */
function clockTime(us: number, digits: 0 | 3 | 6 = 6): string {
  if (!Number.isFinite(us) || Math.abs(us) > MAX_TIME_US) return '?';
  const whole = Math.round(us);
  const hms = new Date(Math.floor(whole / 1000)).toISOString().slice(11, 19);
  if (digits === 0) return hms;
  const frac = String(((whole % 1_000_000) + 1_000_000) % 1_000_000).padStart(6, '0');
  return `${hms}.${frac.slice(0, digits)}`;
}

function dateTime(us: number): string {
  if (!Number.isFinite(us) || Math.abs(us) > MAX_TIME_US) return '?';
  return `${new Date(Math.floor(Math.round(us) / 1000)).toISOString().slice(0, 10)} ${clockTime(us)} UTC`;
}

function duration(us: number): string {
  const a = Math.abs(us);
  if (a >= 1_000_000) return `${(a / 1_000_000).toFixed(3)} s`;
  if (a >= 1000) return `${(a / 1000).toFixed(1)} ms`;
  return `${Math.round(a)} µs`;
}

function signedDuration(us: number): string {
  return `${us < 0 ? '-' : '+'}${duration(us)}`;
}

/** Tick spacing: 1-2-5 below a second, clock-friendly steps above. */
function tickStep(spanUs: number): number {
  const steps: number[] = [];
  for (let p = 1; p < 1_000_000; p *= 10) steps.push(p, 2 * p, 5 * p);
  for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]) steps.push(s * 1_000_000);
  return steps.find((s) => spanUs / s <= 10) ?? DAY_US * Math.ceil(spanUs / DAY_US / 10);
}

// ------------------------------------------------------------------------------------- entries

function isGuest(e: TimelineEntry): boolean {
  return e.clock === 'guest' || e.agentRun !== null;
}

interface LaneInfo {
  key: string;
  title: string;
  side: 'guest' | 'host';
  cls: string;
}

function laneOf(e: TimelineEntry): LaneInfo {
  if (isGuest(e)) return { key: `g:${e.plugin}`, title: e.plugin, side: 'guest', cls: 'l-guest' };
  return {
    key: `h:${e.plugin}`,
    title: e.plugin === 'action' ? 'actions' : e.plugin,
    side: 'host',
    cls: HOST_LANE_CLASSES[e.plugin] ?? 'l-host',
  };
}

function laneRank(l: LaneInfo): [number, number, string] {
  const order = l.side === 'guest' ? GUEST_LANE_ORDER : HOST_LANE_ORDER;
  const i = order.indexOf(l.key.slice(2));
  return [l.side === 'guest' ? 0 : 1, i < 0 ? order.length : i, l.key];
}

function compareLanes(a: LaneInfo, b: LaneInfo): number {
  const [x, y] = [laneRank(a), laneRank(b)];
  return x[0] - y[0] || x[1] - y[1] || (x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0);
}

function sourceOf(e: TimelineEntry): string {
  const instance = e.instance ? `#${e.instance}` : '';
  return `${isGuest(e) ? 'guest' : 'host'} · ${e.plugin}${instance}`;
}

function obj(v: unknown): Record<string, unknown> | null {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function signalName(n: number | null): string | null {
  return n === null ? null : nameOfSignal(n);
}

/**
 * A guest record's payload is keyed by its kind ({ signal: {...}, monoNs }); the kind and its body.
 */
function recordBody(e: TimelineEntry): [string, Record<string, unknown>] | null {
  for (const [k, v] of Object.entries(e.payload)) {
    const body = obj(v);
    if (body && k !== 'monoNs') return [k, body];
  }
  return null;
}

/** A mark's caption: a few words, the process where the record names one. */
function markLabel(e: TimelineEntry): string {
  let what = e.event;
  let subject: string | null = null;
  const rec = isGuest(e) ? recordBody(e) : null;
  if (rec) {
    const [kind, b] = rec;
    subject = str(obj(b['target'])?.['comm']) ?? str(obj(b['task'])?.['comm']) ?? str(obj(b['victim'])?.['comm']) ?? str(b['comm']);
    if (kind === 'signal') what = signalName(num(b['sig'])) ?? what;
    else if (kind === 'exit') {
      const sig = num(b['signal']);
      const code = num(b['exitCode']);
      what = sig ? `exit ${signalName(sig)}` : b['codeKnown'] === true && code !== null ? `exit ${code}` : 'exit';
    } else if (kind === 'oom') what = 'OOM kill';
    else if (kind === 'psi') what = `${str(b['resource']) ?? ''} pressure`.trim();
    else if (kind === 'kprobe') what = str(b['label']) ?? str(b['symbol']) ?? what;
  } else if (e.plugin === 'action') {
    subject = str(e.payload['action']);
  } else if (e.plugin === 'pacemaker') {
    subject = str(e.payload['task']) ?? str(e.payload['node']);
  } else if (e.plugin === 'libvirt') {
    subject = str(e.payload['reason']) ?? str(e.payload['action']);
  }
  return truncate(subject ? `${what} ${subject}` : what, MAX_LABEL_CHARS);
}

// ---------------------------------------------------------------------------------------- SVG

interface Mark {
  entry: TimelineEntry;
  x: number;
  label: string;
  evidence: boolean;
  /** label row within the lane, null when it fits nowhere (the mark keeps its tooltip) */
  row: number | null;
  /** label drawn leftwards from the mark (near the right edge) */
  leftward: boolean;
}

/**
 * Puts each label in the first row of its lane where it overlaps no other: evidence first, so the
 * labels that matter are never the ones crowded out, then in time order.
 */
function placeLabels(marks: Mark[]): number {
  const rows: Array<Array<[number, number]>> = [];
  const order = [...marks].sort((a, b) => Number(b.evidence) - Number(a.evidence) || a.x - b.x || a.entry.id - b.entry.id);
  for (const m of order) {
    const w = m.label.length * LABEL_CHAR_W;
    m.leftward = m.x - 3 + w > SVG_W - 2;
    const from = m.leftward ? m.x + 3 - w : m.x - 3;
    const to = from + w;
    for (let r = 0; r < MAX_LABEL_ROWS; r++) {
      const taken = (rows[r] ??= []);
      if (taken.some(([a, b]) => from < b + LABEL_GAP && a < to + LABEL_GAP)) continue;
      taken.push([from, to]);
      m.row = r;
      break;
    }
  }
  return Math.max(1, rows.length);
}

function f1(n: number): string {
  return n.toFixed(1);
}

function renderSvg(a: Analysis, entries: TimelineEntry[], evidence: Set<number>): string {
  let t0 = a.window.fromUs;
  let t1 = a.window.toUs;
  for (const e of entries) {
    if (!Number.isFinite(e.timeUs)) continue;
    t0 = Math.min(t0, e.timeUs);
    t1 = Math.max(t1, e.timeUs);
  }
  if (!Number.isFinite(t0) || !Number.isFinite(t1)) [t0, t1] = [0, 1_000_000];
  if (t1 <= t0) t1 = t0 + 1_000_000;
  const xOf = (us: number): number => GUTTER + ((us - t0) / (t1 - t0)) * PLOT_W;

  const lanes = new Map<string, { info: LaneInfo; marks: Mark[] }>();
  for (const e of entries) {
    const info = laneOf(e);
    let lane = lanes.get(info.key);
    if (!lane) {
      lane = { info, marks: [] };
      lanes.set(info.key, lane);
    }
    lane.marks.push({ entry: e, x: xOf(e.timeUs), label: markLabel(e), evidence: evidence.has(e.id), row: null, leftward: false });
  }
  const ordered = [...lanes.values()].sort((p, q) => compareLanes(p.info, q.info));

  const topBand = 8 + VERDICT_ROW_H * Math.max(1, a.verdicts.length);
  // Painted bottom up: lane stripes, grid, verdict lines, then marks and captions over them.
  const stripes: string[] = [];
  const body: string[] = [];
  let y = topBand;
  ordered.forEach((lane, i) => {
    const rows = placeLabels(lane.marks);
    const h = LABEL_Y0 + (rows - 1) * ROW_H + 7;
    const side = lane.info.side === 'guest' ? 'guest' : 'host';
    stripes.push(`<rect class="${i % 2 ? 'stripe odd' : 'stripe'}" x="0" y="${f1(y)}" width="${SVG_W}" height="${f1(h)}"/>`);
    body.push(
      `<g class="lane ${lane.info.cls}" data-lane="${esc(lane.info.key)}">`,
      `<text class="lane-side" x="10" y="${f1(y + MARK_Y - 2)}">${side}</text>`,
      `<text class="lane-title" x="10" y="${f1(y + MARK_Y + 12)}">${esc(truncate(lane.info.title, 20))}</text>`,
      `<line class="lane-axis" x1="${GUTTER}" x2="${GUTTER + PLOT_W}" y1="${f1(y + MARK_Y)}" y2="${f1(y + MARK_Y)}"/>`,
    );
    // Evidence last, so it is drawn over ordinary marks at the same instant.
    const drawOrder = [...lane.marks].sort((p, q) => Number(p.evidence) - Number(q.evidence) || p.x - q.x || p.entry.id - q.entry.id);
    for (const m of drawOrder) {
      const e = m.entry;
      const tip = `#${e.id} ${clockTime(e.timeUs)} ${e.plugin}/${e.event}: ${e.description}`;
      const cy = y + MARK_Y;
      body.push(
        `<g class="mark${m.evidence ? ' evidence' : ''}" data-id="${e.id}"><title>${esc(tip)}</title>` +
          (m.evidence ? `<circle class="ring" cx="${f1(m.x)}" cy="${f1(cy)}" r="9"/>` : '') +
          `<circle class="dot" cx="${f1(m.x)}" cy="${f1(cy)}" r="${m.evidence ? 5.5 : 4}"/>` +
          (m.row === null
            ? ''
            : `<text class="label" x="${f1(m.leftward ? m.x + 3 : m.x - 3)}" y="${f1(y + LABEL_Y0 + m.row * ROW_H)}"` +
              `${m.leftward ? ' text-anchor="end"' : ''}>${esc(m.label)}</text>`) +
          '</g>',
      );
    }
    body.push('</g>');
    y += h;
  });
  if (ordered.length === 0) {
    body.push(`<text class="empty" x="${GUTTER + PLOT_W / 2}" y="${topBand + 30}" text-anchor="middle">no events in this window</text>`);
    y += 50;
  }
  const lanesBottom = y;

  // Time axis on the host clock, with grid lines through the lanes.
  const step = tickStep(t1 - t0);
  const digits: 0 | 3 | 6 = step >= 1_000_000 ? 0 : step >= 1000 ? 3 : 6;
  const grid: string[] = [];
  const axis: string[] = [`<line class="axis" x1="${GUTTER}" x2="${GUTTER + PLOT_W}" y1="${f1(lanesBottom)}" y2="${f1(lanesBottom)}"/>`];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    const x = f1(xOf(t));
    grid.push(`<line class="grid" x1="${x}" x2="${x}" y1="${topBand}" y2="${f1(lanesBottom)}"/>`);
    axis.push(
      `<line class="tick" x1="${x}" x2="${x}" y1="${f1(lanesBottom)}" y2="${f1(lanesBottom + 5)}"/>`,
      `<text class="tick-label" x="${x}" y="${f1(lanesBottom + 18)}" text-anchor="middle">${clockTime(t, digits)}</text>`,
    );
  }
  axis.push(
    `<text class="axis-title" x="${GUTTER}" y="${f1(lanesBottom + 36)}">host clock, UTC, ${esc(dateTime(t0).slice(0, 10))}` +
      ` · window ${esc(duration(t1 - t0))} · guest times reconciled onto the host clock</text>`,
  );

  // One vertical marker per verdict at the moment it is about; captions on rows of their own,
  // since several verdicts often point at the same instant.
  const markers = a.verdicts.map((v, i) => {
    const captionY = 4 + VERDICT_ROW_H * (i + 1) - 3;
    const x = xOf(Math.min(Math.max(v.atUs, t0), t1));
    const cls = v.confidence === 'uncertain' ? 'vline uncertain' : 'vline';
    const anchorEnd = x > GUTTER + PLOT_W * 0.8;
    return (
      `<g class="${cls}"><line x1="${f1(x)}" x2="${f1(x)}" y1="${f1(captionY - 9)}" y2="${f1(lanesBottom)}"/>` +
      `<text x="${f1(anchorEnd ? x - 4 : x + 4)}" y="${f1(captionY)}"${anchorEnd ? ' text-anchor="end"' : ''}>V${i + 1} ${esc(v.kind)}` +
      `${v.confidence === 'uncertain' ? ' (uncertain)' : ''}</text></g>`
    );
  });

  const height = lanesBottom + AXIS_H;
  const label = `Timeline of ${entries.length} events from ${dateTime(t0)} to ${dateTime(t1)}, one lane per source`;
  return (
    `<svg class="timeline" viewBox="0 0 ${SVG_W} ${f1(height)}" width="100%" role="img" aria-label="${esc(label)}">` +
    `${stripes.join('')}${grid.join('')}${markers.join('')}${body.join('')}${axis.join('')}</svg>`
  );
}

// ------------------------------------------------------------------------------------------ HTML

const CSS = `
*{box-sizing:border-box}
body{margin:0;padding:20px 28px 40px;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans','Liberation Sans',Arial,sans-serif;color:#1f2937;background:#fff}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:16px;margin:26px 0 8px;padding-bottom:3px;border-bottom:1px solid #e5e7eb}
h3{font-size:14px;margin:14px 0 6px}
.sub{color:#4b5563;margin:0 0 14px}
.warn{background:#fffbeb;border:1px solid #f59e0b;padding:6px 10px;border-radius:4px}
.verdict{border:2px solid #dc2626;border-left-width:8px;border-radius:6px;padding:10px 14px;margin:10px 0;background:#fef2f2}
.verdict.uncertain{border-color:#d97706;border-style:dashed;border-left-style:solid;background:#fffbeb}
.verdict.planned{border-color:#2563eb;background:#eff6ff}
.badges{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:4px}
.vno{font-weight:700;color:#6b7280}
.kind{font-size:17px;font-weight:700}
.code{font-family:ui-monospace,'DejaVu Sans Mono','Liberation Mono',monospace;font-size:12px;color:#4b5563}
.pill{border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;border:1px solid}
.scope{border-color:#6b7280;color:#374151;background:#fff}
.conf-confident{border-color:#15803d;color:#fff;background:#15803d}
.conf-uncertain{border-color:#b45309;color:#78350f;background:#fde68a}
.sentence{font-size:18px;margin:6px 0}
.meta{color:#4b5563;margin:4px 0 0;font-size:13px}
dl.details{display:grid;grid-template-columns:max-content 1fr;gap:1px 12px;margin:6px 0 0;font-size:12px}
dl.details dt{color:#6b7280}
dl.details dd{margin:0;font-family:ui-monospace,'DejaVu Sans Mono','Liberation Mono',monospace;overflow-wrap:anywhere}
.none{font-size:16px;color:#374151}
svg.timeline{display:block;border:1px solid #e5e7eb;border-radius:4px;font-family:inherit}
svg .stripe{fill:#fff}
svg .stripe.odd{fill:#f8fafc}
svg .lane-side{font-size:10px;fill:#9ca3af;text-transform:uppercase;letter-spacing:.05em}
svg .lane-title{font-size:13px;font-weight:600;fill:#111827}
svg .lane-axis{stroke:#d1d5db;stroke-width:1}
svg .grid{stroke:#e5e7eb;stroke-width:1}
svg .axis,svg .tick{stroke:#6b7280;stroke-width:1}
svg .tick-label{font-size:11px;fill:#374151}
svg .axis-title{font-size:11px;fill:#6b7280}
svg .empty{font-size:13px;fill:#6b7280}
svg .label{font-size:11px;fill:#374151}
svg .dot{stroke:#fff;stroke-width:1}
svg .l-guest .dot{fill:#2563eb}
svg .l-libvirt .dot{fill:#0f766e}
svg .l-channel .dot{fill:#7c3aed}
svg .l-pacemaker .dot{fill:#c2410c}
svg .l-action .dot{fill:#15803d}
svg .l-host .dot{fill:#6b7280}
svg .mark.evidence .dot{fill:#dc2626}
svg .mark.evidence .ring{fill:none;stroke:#dc2626;stroke-width:2;opacity:.55}
svg .mark.evidence .label{fill:#b91c1c;font-weight:700}
svg .vline line{stroke:#dc2626;stroke-width:1.5}
svg .vline text{font-size:11px;font-weight:700;fill:#b91c1c}
svg .vline.uncertain line{stroke:#d97706;stroke-dasharray:5 4}
svg .vline.uncertain text{fill:#b45309}
.legend{font-size:12px;color:#4b5563;margin:6px 0 0}
.legend span{margin-right:14px;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{text-align:left;vertical-align:top;padding:3px 8px;border-bottom:1px solid #eef0f3}
th{background:#f3f4f6;font-weight:600}
td.num,td.t{font-family:ui-monospace,'DejaVu Sans Mono','Liberation Mono',monospace;white-space:nowrap}
td.desc{overflow-wrap:anywhere}
tr.evidence td{background:#fef2f2}
tr.evidence td.t{font-weight:700;color:#b91c1c}
.ev-tag{display:inline-block;font-size:10px;font-weight:700;color:#fff;background:#dc2626;border-radius:3px;padding:0 4px;margin-left:6px}
.small{font-size:11px;color:#6b7280}
details summary{cursor:pointer;color:#4b5563}
pre{margin:4px 0 0;font-size:11px;white-space:pre-wrap;overflow-wrap:anywhere;max-width:60ch}
ol.evidence-list{margin:4px 0 0;padding-left:22px}
ol.evidence-list li{margin:2px 0}
a{color:#1d4ed8}
`;

function detailsList(d: Record<string, unknown> | undefined): string {
  if (!d) return '';
  const items = Object.entries(d).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(truncate(typeof v === 'string' ? v : json(v), 300))}</dd>`);
  return items.length ? `<dl class="details">${items.join('')}</dl>` : '';
}

function evidenceLinks(v: Verdict, byId: Map<number, TimelineEntry>): string {
  if (v.evidence.length === 0) return 'no event named as evidence';
  const links = v.evidence.map((id) => (byId.has(id) ? `<a href="#ev-${id}">#${id}</a>` : `#${id} (not in the timeline)`));
  return `rests on ${links.join(', ')}`;
}

function renderVerdict(v: Verdict, i: number, byId: Map<number, TimelineEntry>): string {
  const uncertain = v.confidence === 'uncertain';
  const cls = ['verdict', uncertain ? 'uncertain' : 'confident', v.kind === 'planned-stop' ? 'planned' : ''].filter(Boolean).join(' ');
  const conf = uncertain
    ? '<span class="pill conf-uncertain" title="the evidence is thin: a hint, not a finding">? UNCERTAIN: thin evidence</span>'
    : '<span class="pill conf-confident">confident</span>';
  return (
    `<article class="${cls}" id="v${i + 1}" data-kind="${esc(v.kind)}" data-confidence="${esc(v.confidence)}">` +
    `<div class="badges"><span class="vno">V${i + 1}</span><span class="kind">${esc(KIND_TITLES[v.kind] ?? v.kind)}</span>` +
    `<span class="code">${esc(v.kind)}</span><span class="pill scope">scope: ${esc(SCOPE_TITLES[v.scope] ?? v.scope)}</span>${conf}</div>` +
    `<p class="sentence">${esc(v.summary)}</p>` +
    `<p class="meta">at ${esc(dateTime(v.atUs))} · ${evidenceLinks(v, byId)}</p>` +
    detailsList(v.details) +
    '</article>'
  );
}

function renderEvidence(a: Analysis, byId: Map<number, TimelineEntry>): string {
  if (a.verdicts.length === 0) return '';
  const parts = a.verdicts.map((v, i) => {
    const items = v.evidence.map((id) => {
      const e = byId.get(id);
      if (!e) return `<li>#${id}: not in the timeline (outside the window or dropped)</li>`;
      return (
        `<li><a href="#ev-${id}">#${id}</a> <span class="code">${esc(clockTime(e.timeUs))}</span> ` +
        `<b>${esc(e.plugin)}/${esc(e.event)}</b> ${esc(e.description)}</li>`
      );
    });
    const list = items.length ? `<ol class="evidence-list">${items.join('')}</ol>` : '<p class="small">No event named.</p>';
    return `<h3>V${i + 1} ${esc(KIND_TITLES[v.kind] ?? v.kind)}</h3>${list}`;
  });
  return `<section id="evidence"><h2>Evidence</h2>${parts.join('')}</section>`;
}

function renderClocks(a: Analysis): string {
  const c = a.clocks;
  const rows = c.runs.map(
    (r) =>
      `<tr><td class="num">${esc(r.agentRun)}</td><td class="num">${esc(signedDuration(r.offsetUs))}</td><td class="num">${r.records}</td>` +
      `<td class="num">${esc(duration(r.spreadUs))}</td><td class="num">${esc(clockTime(r.firstUs))} – ${esc(clockTime(r.lastUs))}</td></tr>`,
  );
  const table = rows.length
    ? '<table><thead><tr><th>agent run</th><th>offset (host − guest)</th><th>records used</th><th>spread</th><th>first – last (host clock)</th></tr></thead>' +
      `<tbody>${rows.join('')}</tbody></table>`
    : '<p class="small">No guest records in the window: every time is the host\u2019s own.</p>';
  return `<section id="clocks"><h2>Clocks</h2><p>${esc(c.note)} <span class="small">(method: ${esc(c.method)})</span></p>${table}</section>`;
}

function renderTable(a: Analysis, entries: TimelineEntry[], evidence: Set<number>): string {
  const rows = entries.map((e) => {
    const ev = evidence.has(e.id);
    const guestClock = e.guestTimeUs !== null ? `<br><span class="small">guest clock ${esc(clockTime(e.guestTimeUs))}</span>` : '';
    return (
      `<tr id="ev-${e.id}"${ev ? ' class="evidence"' : ''}><td class="num">${e.id}</td>` +
      `<td class="t">${esc(clockTime(e.timeUs))}${ev ? '<span class="ev-tag">evidence</span>' : ''}${guestClock}</td>` +
      `<td class="num">${esc(signedDuration(e.timeUs - a.anchor.atUs))}</td><td>${esc(sourceOf(e))}</td><td>${esc(e.event)}</td>` +
      `<td class="desc">${esc(e.description)}</td>` +
      `<td><details><summary>payload</summary><pre>${esc(json(e.payload, 1))}</pre></details></td></tr>`
    );
  });
  return (
    `<section id="timeline"><h2>Timeline (${entries.length} events)</h2>` +
    omissions(a, entries.length) +
    '<table><thead><tr><th>#</th><th>time (host clock, UTC)</th><th>from anchor</th><th>source</th><th>event</th><th>description</th><th></th></tr></thead>' +
    `<tbody>${rows.join('')}</tbody></table></section>`
  );
}

/** What the timeline does not show, said where the reader would look for it. */
function omissions(a: Analysis, shown: number): string {
  const notes: string[] = [];
  const heartbeats = a.omitted?.heartbeats ?? 0;
  const distant = a.omitted?.distant ?? 0;
  if (heartbeats > 0)
    notes.push(`${heartbeats} routine heartbeat${heartbeats === 1 ? '' : 's'} (only those at the edges of a gap are shown)`);
  if (distant > 0) notes.push(`${distant} event${distant === 1 ? '' : 's'} far from the anchor`);
  return notes.length
    ? `<p class="small">${shown} of ${a.eventCount} events analysed are shown; left out: ${esc(notes.join('; '))}.</p>`
    : '';
}

function legend(): string {
  const sw = (color: string, text: string): string => `<span><i class="sw" style="background:${color}"></i>${text}</span>`;
  return (
    '<p class="legend">' +
    sw('#2563eb', 'guest probe') +
    sw('#0f766e', 'libvirt') +
    sw('#7c3aed', 'channel') +
    sw('#c2410c', 'pacemaker') +
    sw('#15803d', 'action') +
    sw('#dc2626', 'evidence of a verdict') +
    '<span>red line: the moment a verdict is about (dashed: uncertain) · hover a mark for its description</span></p>'
  );
}

/** The analysis as one self-contained HTML page (UTF-8). */
export function renderHtml(a: Analysis): string {
  const entries = [...a.timeline].sort((p, q) => p.timeUs - q.timeUs || p.id - q.id);
  const byId = new Map(entries.map((e) => [e.id, e]));
  const evidence = new Set<number>([...a.verdicts.flatMap((v) => v.evidence), ...entries.filter((e) => e.evidence).map((e) => e.id)]);
  const vmName = a.vm === '' ? 'the host' : `vm \u201c${a.vm}\u201d`;
  const anchor =
    a.anchor.mode === 'last'
      ? `around the last failure${a.anchor.eventId !== null ? ` (event #${a.anchor.eventId})` : ''}`
      : `around ${dateTime(a.anchor.atUs)}${a.anchor.eventId !== null ? ` (event #${a.anchor.eventId})` : ''}`;
  const verdicts = a.verdicts.length
    ? a.verdicts.map((v, i) => renderVerdict(v, i, byId)).join('')
    : '<p class="none">No failure-like event in this window.</p>';
  const first = a.verdicts[0];
  const title = `vesper: ${vmName}${first ? `: ${KIND_TITLES[first.kind] ?? first.kind}` : ''}`;
  return (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' +
    // Belt and braces for "fetches nothing, runs nothing": even markup that slipped past esc()
    // could neither load a resource nor execute.
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">` +
    '<meta name="viewport" content="width=device-width, initial-scale=1">' +
    `<meta name="generator" content="vesper analyze, format ${esc(a.version)}">` +
    `<title>${esc(title)}</title><style>${CSS}</style></head>\n<body>` +
    `<header><h1>vesper analysis: ${esc(vmName)}</h1>` +
    `<p class="sub">Window ${esc(dateTime(a.window.fromUs))} to ${esc(clockTime(a.window.toUs))} (${esc(duration(a.window.toUs - a.window.fromUs))}),` +
    ` ${esc(anchor)} · ${a.eventCount} events analysed, ${entries.length} shown · generated ${esc(dateTime(a.generatedAtUs))}</p>` +
    `${a.truncated ? '<p class="warn">The window held more events than one analysis reads: its earliest were not read.</p>' : ''}</header>\n` +
    `<section id="verdicts"><h2>Verdict${a.verdicts.length === 1 ? '' : 's'}</h2>${verdicts}</section>\n` +
    `<section id="chart"><h2>Failure window</h2>${renderSvg(a, entries, evidence)}${legend()}</section>\n` +
    `${renderEvidence(a, byId)}\n${renderTable(a, entries, evidence)}\n${renderClocks(a)}\n` +
    '</body></html>\n'
  );
}
