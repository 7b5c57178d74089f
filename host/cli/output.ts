// How the CLI prints what vesperd answered: a table for people, JSON for scripts (events as
// one JSON object per line, so `events -f -o json` can be read line by line).
import Table from 'cli-table3';
import type { apipb } from '../../proto/api-codec.js';

export interface Output {
  output: 'table' | 'json';
}

const out = (s: string): void => void process.stdout.write(s);

/** Where the output goes: a terminal (boxes, fitted to its width) or a pipe/file (plain columns). */
export interface Term {
  tty: boolean;
  /** the terminal's width in characters */
  columns?: number;
}

export function stdoutTerm(): Term {
  return { tty: Boolean(process.stdout.isTTY), columns: process.stdout.columns };
}

/**
 * A table: on a terminal, boxed and fitted to its width (the widest columns wrap); elsewhere
 * plain columns separated by two spaces, one line per row, as virsh prints them.
 */
export function formatTable(head: string[], rows: Array<Array<string | number>>, term: Term = stdoutTerm()): string {
  const cells = rows.map((r) => r.map(String));
  if (!term.tty) {
    const widths = head.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
    const line = (r: string[]): string =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd();
    return [head, ...cells].map((r) => `${line(r)}\n`).join('');
  }
  // Each column's natural width (its longest line, plus cli-table3's padding of 1 each side).
  const natural = head.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)) + 2);
  const columns = term.columns && term.columns > 0 ? term.columns : 80;
  const room = columns - (head.length + 1); // the vertical borders
  const widths = [...natural];
  // Narrow the widest column, one character at a time, until the table fits (not below 8).
  for (let total = widths.reduce((a, b) => a + b, 0); total > room; total--) {
    let widest = 0;
    for (let i = 1; i < widths.length; i++) if (widths[i]! > widths[widest]!) widest = i;
    if (widths[widest]! <= 8) break;
    widths[widest]!--;
  }
  const t = new Table({
    head,
    colWidths: widths,
    style: { head: [], border: [] },
    chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
  });
  t.push(...cells.map((r) => r.map((c, i) => wrapText(c, widths[i]! - 2))));
  return `${t.toString()}\n`;
}

/** Text broken into lines of at most `width`: at spaces where it can, inside a word where it must. */
export function wrapText(text: string, width: number): string {
  if (width < 1) return text;
  const out: string[] = [];
  for (const para of text.split('\n')) {
    let line = '';
    for (let word of para.split(' ')) {
      while (word.length > width) {
        const room = line ? width - line.length - 1 : width;
        if (room < 1) {
          out.push(line);
          line = '';
          continue;
        }
        out.push(line ? `${line} ${word.slice(0, room)}` : word.slice(0, room));
        line = '';
        word = word.slice(room);
      }
      if (!line) line = word;
      else if (line.length + 1 + word.length <= width) line += ` ${word}`;
      else {
        out.push(line);
        line = word;
      }
    }
    out.push(line);
  }
  return out.join('\n');
}

function table(head: string[], rows: Array<Array<string | number>>): string {
  return formatTable(head, rows);
}

/** The VM column of an event: host events have none. */
export function vmColumn(vm: string | null | undefined): string {
  return vm ? vm : '(host)';
}

function timeOf(us: number | null | undefined): string {
  return us ? new Date(Number(us) / 1000).toISOString() : '-';
}

export function printVms(vms: apipb.IVmSummary[], o: Output): void {
  if (o.output === 'json') return out(`${JSON.stringify(vms.map(vmJson))}\n`);
  out(
    table(
      ['VM', 'STATE', 'LINK', 'VIA', 'PROBES', 'EVENTS', 'LAST EVENT'],
      vms.map((v) => [
        v.name ?? '',
        v.state ?? '',
        v.link ?? '',
        v.transport === 'ssh' ? `ssh ${v.target ?? ''}` : v.transport || '-',
        (v.probes ?? []).join(',') || '-',
        Number(v.events ?? 0),
        timeOf(v.lastEventUs),
      ]),
    ),
  );
}

function vmJson(v: apipb.IVmSummary): {
  name: string;
  state: string;
  hasChannel: boolean;
  link: string;
  probes: string[];
  events: number;
  lastEventUs: number | null;
  transport: string;
  target: string | null;
} {
  return {
    name: v.name ?? '',
    state: v.state ?? '',
    hasChannel: Boolean(v.hasChannel),
    link: v.link ?? '',
    probes: v.probes ?? [],
    events: Number(v.events ?? 0),
    lastEventUs: Number(v.lastEventUs ?? 0) || null,
    transport: v.transport || 'none',
    target: v.target || null,
  };
}

export function printStatus(d: apipb.IVmDetail, o: Output): void {
  const attached = (d.attached ?? []).map((a) => ({
    name: a.name,
    instances: a.instances,
    params: a.params ?? {},
    loaded: Boolean(a.loaded),
    warnings: (a.warnings ?? []).map((w) => ({ code: w.code ?? '', message: w.message ?? '' })),
  }));
  const j = {
    ...vmJson(d.summary ?? {}),
    agentVersion: d.agentVersion || null,
    kernel: d.kernel || null,
    bootId: d.bootId || null,
    agentPid: d.agentPid || null,
    heartbeatLost: Boolean(d.heartbeatLost),
    recordsReceived: Number(d.recordsReceived ?? 0),
    recordsLost: Number(d.recordsLost ?? 0),
    channelSocket: d.channelSocket || null,
    linkErrorCode: d.linkErrorCode || null,
    linkError: d.linkError || null,
    hostKey: d.hostKey || null,
    agentTrust: d.agentTrust || null,
    kernelLacks: d.kernelLacks ?? [],
    attached,
  };
  if (o.output === 'json') return out(`${JSON.stringify(j)}\n`);
  const rows: Array<[string, string]> = [
    ['VM', String(j.name)],
    ['state', String(j.state)],
    ['link', String(j.link)],
    ...(j.transport === 'ssh'
      ? ([
          ['via', `ssh ${j.target ?? ''}`],
          ['host key', j.hostKey ?? '-'],
        ] as Array<[string, string]>)
      : ([['channel', j.channelSocket ?? '(none)']] as Array<[string, string]>)),
    ...(j.linkErrorCode ? ([['link error', `${j.linkErrorCode}: ${j.linkError ?? ''}`]] as Array<[string, string]>) : []),
    ['agent', j.agentVersion ? `${j.agentVersion} pid ${j.agentPid} on ${j.kernel}` : '-'],
    ...(j.agentTrust ? ([['agent trusts', j.agentTrust]] as Array<[string, string]>) : []),
    ['heartbeat', j.heartbeatLost ? 'LOST' : 'ok'],
    ['records', `${j.recordsReceived} received, ${j.recordsLost} lost in the guest`],
    ['events stored', String(j.events)],
    ...j.kernelLacks.map((m): [string, string] => ['kernel lacks', m]),
  ];
  out(rows.map(([k, v]) => `${k.padEnd(14)} ${v}\n`).join(''));
  if (attached.length)
    out(
      table(
        ['PROBE', 'INSTANCES', 'LOADED', 'PARAMS'],
        attached.map((a) => [
          a.name ?? '',
          a.instances ?? 1,
          a.loaded ? 'yes' : 'no',
          Object.entries(a.params)
            .map(([k, v]) => `${k}=${v}`)
            .join(' ') || '-',
        ]),
      ),
    );
  // what the guest's kernel lacks that a loaded probe runs without
  for (const a of attached) for (const w of a.warnings) out(`${a.name}: ${w.code}: ${w.message}\n`);
}

export function printProbes(ps: apipb.IProbeInfo[], o: Output): void {
  if (o.output === 'json')
    return out(
      `${JSON.stringify(ps.map((p) => ({ name: p.name, version: p.version, description: p.description, events: p.events ?? [], params: p.params ?? [], defaultInstances: p.defaultInstances })))}\n`,
    );
  out(
    table(
      ['PROBE', 'VERSION', 'EVENTS', 'PARAMS', 'DESCRIPTION'],
      ps.map((p) => [
        p.name ?? '',
        p.version ?? '',
        (p.events ?? []).join(','),
        (p.params ?? []).map((x) => `${x.name}=${x.default}`).join(' ') || '-',
        p.description ?? '',
      ]),
    ),
  );
}

export function printParams(params: Record<string, string>, o: Output): void {
  if (o.output === 'json') return out(`${JSON.stringify(params)}\n`);
  out(
    table(
      ['PARAM', 'VALUE'],
      Object.entries(params)
        .sort()
        .map(([k, v]) => [k, v]),
    ),
  );
}

export function printFilters(rules: apipb.IFilterRule[], o: Output): void {
  const j = rules.map((r) => ({
    vm: r.vm,
    plugin: r.plugin,
    instance: r.instance,
    event: r.event,
    decision: r.decision,
    action: r.action || null,
    args: r.args ?? [],
  }));
  if (o.output === 'json') return out(`${JSON.stringify(j)}\n`);
  out(
    table(
      ['VM', 'PLUGIN', 'INSTANCE', 'EVENT', 'DECISION'],
      j.map((r) => [r.vm ?? '', r.plugin ?? '', r.instance ?? '', r.event ?? '', [r.decision, r.action ?? '', ...r.args].join(' ').trim()]),
    ),
  );
}

export function eventJson(e: apipb.IEvent): Record<string, unknown> {
  let payload: unknown = null;
  try {
    payload = JSON.parse(e.payloadJson || 'null');
  } catch {
    payload = e.payloadJson;
  }
  return {
    id: Number(e.id ?? 0),
    vm: e.vm,
    plugin: e.plugin,
    instance: e.instance ?? 0,
    event: e.event,
    guestTimeUs: Number(e.guestTimeUs ?? 0) || null,
    hostTimeUs: Number(e.hostTimeUs ?? 0),
    agentRun: e.agentRun || null,
    seq: Number(e.seq ?? 0) || null,
    disposition: e.disposition,
    payload,
  };
}

/** A short human summary of an event's payload (the table's last column). */
export function summaryOf(j: Record<string, unknown>): string {
  const p = (j['payload'] ?? {}) as Record<string, unknown>;
  const parts: string[] = [];
  const walk = (o: Record<string, unknown>, prefix: string, depth: number): void => {
    for (const [k, v] of Object.entries(o)) {
      if (k === 'monoNs' || v === null || v === '' || parts.length >= 12) continue;
      if (typeof v === 'object' && !Array.isArray(v) && depth < 2) walk(v as Record<string, unknown>, `${prefix}${k}.`, depth + 1);
      // eslint-disable-next-line @typescript-eslint/no-base-to-string -- v is not an object here
      else if (typeof v !== 'object') parts.push(`${prefix}${k}=${String(v)}`);
    }
  };
  walk(p, '', 0);
  return parts.join(' ');
}

export function printEvents(evs: apipb.IEvent[], o: Output, header: boolean): void {
  if (o.output === 'json') return out(evs.map((e) => `${JSON.stringify(eventJson(e))}\n`).join(''));
  const lines = evs.map((e) => {
    const j = eventJson(e);
    const d = j['disposition'] === 'discard' ? ' (discarded)' : j['disposition'] === 'action' ? ' (action)' : '';
    return `${timeOf(Number(e.hostTimeUs))}  ${vmColumn(e.vm).padEnd(16)} ${`${e.plugin}/${e.instance ?? 0}`.padEnd(12)} ${String(e.event).padEnd(16)} ${summaryOf(j)}${d}\n`;
  });
  if (header) out(`${'HOST TIME'.padEnd(24)}  ${'VM'.padEnd(16)} ${'PLUGIN'.padEnd(12)} ${'EVENT'.padEnd(16)} DETAIL\n`);
  out(lines.join(''));
}
