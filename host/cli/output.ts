// How the CLI prints what vesperd answered: a table for people, JSON for scripts (events as
// one JSON object per line, so `events -f -o json` can be read line by line).
import Table from 'cli-table3';
import type { apipb } from '../../proto/api-codec.js';

export interface Output {
  output: 'table' | 'json';
}

const out = (s: string): void => void process.stdout.write(s);

function table(head: string[], rows: Array<Array<string | number>>): string {
  const t = new Table({ head, style: { head: [], border: [] }, chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' } });
  t.push(...rows.map((r) => r.map(String)));
  return `${t.toString()}\n`;
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
    ['heartbeat', j.heartbeatLost ? 'LOST' : 'ok'],
    ['records', `${j.recordsReceived} received, ${j.recordsLost} lost in the guest`],
    ['events stored', String(j.events)],
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
    return `${timeOf(Number(e.hostTimeUs))}  ${String(e.vm).padEnd(16)} ${`${e.plugin}/${e.instance ?? 0}`.padEnd(12)} ${String(e.event).padEnd(16)} ${summaryOf(j)}${d}\n`;
  });
  if (header) out(`${'HOST TIME'.padEnd(24)}  ${'VM'.padEnd(16)} ${'PLUGIN'.padEnd(12)} ${'EVENT'.padEnd(16)} DETAIL\n`);
  out(lines.join(''));
}
