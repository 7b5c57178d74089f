// `vesper fleet list|events|analyze`: the fleet's events as the hosts' nats sinks published them
// to JetStream, read from the bus (not from any host). Where the bus is: --bus URLS (or
// VESPER_BUS), or -c vesper.yaml with the sink's entry (--sink NAME, default the first nats sink).
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { parseNatsParams, type NatsParams } from '../export/nats-config.js';
import { parseSubject } from '../export/nats-subject.js';
import { analysisText } from '../analysis/text.js';
import { renderHtml } from '../analysis/report-html.js';
import { FleetBus, type BusEvent } from '../fleet/bus.js';
import { fleetAnalyze, hostsText } from '../fleet/analyze.js';
import { formatTable } from './output.js';
import { sinceUs, windowUs } from './main.js';

interface BusOptions {
  bus?: string;
  config?: string;
  sink?: string;
  stream?: string;
  subjectPrefix?: string;
  creds?: string;
  user?: string;
}

function busOptions(c: Command): Command {
  return c
    .option('--bus <urls>', 'NATS servers, comma-separated (default $VESPER_BUS)')
    .option('-c, --config <file>', "read the bus from this vesper.yaml's nats sink")
    .option('--sink <name>', 'which nats sink of the config (default the first)')
    .option('--stream <name>', "the JetStream stream (default VESPER, or the sink's)")
    .option('--subject-prefix <token>', "the subjects' first token (default vesper, or the sink's)")
    .option('--creds <file>', 'a NATS .creds file')
    .option('--user <user>', 'NATS user (the password from $VESPER_BUS_PASSWORD)');
}

/** The bus's settings from the options, the config's sink entry and the environment. */
export function busConfig(o: BusOptions, env: NodeJS.ProcessEnv = process.env): NatsParams {
  let base: Record<string, unknown> = {};
  if (o.config) {
    let doc: { sinks?: Array<Record<string, unknown>> };
    try {
      doc = (parseYaml(readFileSync(o.config, 'utf8')) ?? {}) as typeof doc;
    } catch (err) {
      throw new VesperError(ErrorCode.CONFIG_INVALID, `${o.config}: ${(err as Error).message}`);
    }
    const entry = (doc.sinks ?? []).find((s) => s['kind'] === 'nats' && (o.sink === undefined || s['name'] === o.sink));
    if (!entry) throw new VesperError(ErrorCode.CONFIG_INVALID, `${o.config}: no nats sink${o.sink ? ` named ${o.sink}` : ''} in sinks:`);
    // the runner's keys (batch_max, linger, ...) are not the bus's
    const { name: _n, kind: _k, batch_max: _b, linger: _l, timeout: _t, retry_min: _r1, retry_max: _r2, start: _s, ...params } = entry;
    base = params;
  }
  const servers = o.bus ?? env['VESPER_BUS'] ?? base['servers'];
  if (servers === undefined)
    throw new VesperError(ErrorCode.USAGE, 'where is the bus? give --bus nats://HOST:4222 (or VESPER_BUS), or -c vesper.yaml');
  const stream = { ...((base['stream'] as Record<string, unknown> | undefined) ?? {}), ...(o.stream ? { name: o.stream } : {}) };
  let credentials = base['credentials'];
  if (o.creds) credentials = { creds_file: o.creds };
  else if (o.user) credentials = { user: o.user, password: env['VESPER_BUS_PASSWORD'] ?? '' };
  return parseNatsParams(
    { ...base, servers, stream, ...(credentials ? { credentials } : {}), ...(o.subjectPrefix ? { subject_prefix: o.subjectPrefix } : {}) },
    o.config ? `${o.config}: sinks: nats` : 'the bus options',
  );
}

async function withBus<T>(o: BusOptions, fn: (bus: FleetBus, cfg: NatsParams) => Promise<T>): Promise<T> {
  const cfg = busConfig(o);
  const bus = await FleetBus.open(cfg);
  try {
    return await fn(bus, cfg);
  } finally {
    await bus.close();
  }
}

function tod(us: number): string {
  return new Date(us / 1000).toISOString().replace('T', ' ').slice(0, 23);
}

function shortPayload(p: Record<string, unknown>): string {
  const s = JSON.stringify(p);
  return s.length > 100 ? `${s.slice(0, 97)}...` : s;
}

export function eventLine(e: BusEvent): string {
  return `${tod(e.hostTimeUs)}  ${e.host.padEnd(12)} ${(e.vm || '-').padEnd(16)} ${`${e.plugin}/${e.event}`.padEnd(26)} #${String(e.id).padEnd(8)} ${shortPayload(e.payload)}`;
}

export function addFleetCommands(program: Command): void {
  const fleet = program
    .command('fleet')
    .description("every host's events, read from the fleet bus (NATS JetStream) that the hosts' nats sinks publish to");

  busOptions(fleet.command('list'))
    .description("every host's VMs: how many events, the agent link's last word, the last event")
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: BusOptions & { output: 'table' | 'json' }) => {
      const rows = await withBus(o, async (bus, cfg) => {
        const byVm = new Map<string, { host: string; vm: string; events: number; subjects: string[] }>();
        for (const [subject, n] of await bus.subjects()) {
          const p = parseSubject(cfg.subject_prefix, subject);
          if (!p) continue;
          const k = `${p.host}\u0000${p.vm}`;
          let r = byVm.get(k);
          if (!r) byVm.set(k, (r = { host: p.host, vm: p.vm, events: 0, subjects: [] }));
          r.events += n;
          r.subjects.push(subject);
        }
        const out = [];
        for (const r of [...byVm.values()].sort((a, b) => a.host.localeCompare(b.host) || a.vm.localeCompare(b.vm))) {
          let last: BusEvent | null = null;
          let link: BusEvent | null = null;
          for (const s of r.subjects) {
            const e = await bus.lastOn(s);
            if (!e) continue;
            if (!last || e.streamSeq > last.streamSeq) last = e;
            if (e.plugin === 'channel' && (!link || e.streamSeq > link.streamSeq)) link = e;
          }
          out.push({ host: r.host, vm: r.vm, events: r.events, link: link?.event ?? null, last });
        }
        return out;
      });
      if (o.output === 'json') {
        for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      process.stdout.write(
        formatTable(
          ['HOST', 'VM', 'EVENTS', 'LINK', 'LAST EVENT', 'AT (host clock)'],
          rows.map((r) => [
            r.host,
            r.vm || '(host)',
            r.events,
            r.link ?? '-',
            r.last ? `${r.last.plugin}/${r.last.event}` : '-',
            r.last ? tod(r.last.hostTimeUs) : '-',
          ]),
        ),
      );
    });

  busOptions(fleet.command('events'))
    .description('the events on the bus in the order it stored them; -f keeps following new ones')
    .option('-f, --follow', 'after the stored events, keep printing new ones as they come')
    .option('--host <host>')
    .option('--vm <vm>', "a VM's name ('' for a host's own events)")
    .option('--from-seq <n>', 'start at this stream sequence (every JSON line has its streamSeq)', (v) => Number(v))
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: BusOptions & { follow?: boolean; host?: string; vm?: string; fromSeq?: number; output: 'table' | 'json' }) => {
      if (o.fromSeq !== undefined && !(Number.isInteger(o.fromSeq) && o.fromSeq > 0))
        throw new VesperError(ErrorCode.USAGE, '--from-seq: expected a whole number from 1');
      const ac = new AbortController();
      const stop = (): void => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      process.stdout.once('error', stop);
      const json = o.output === 'json';
      if (!json)
        process.stdout.write(
          `${'TIME (host clock)'.padEnd(24)} ${'HOST'.padEnd(12)} ${'VM'.padEnd(16)} ${'EVENT'.padEnd(26)} ID        PAYLOAD\n`,
        );
      await withBus(o, (bus) =>
        bus.events(
          { host: o.host, vm: o.vm },
          {
            follow: Boolean(o.follow),
            fromSeq: o.fromSeq,
            onNote: (note) => process.stderr.write(`vesper fleet events: ${note}\n`),
          },
          (e) => {
            process.stdout.write(json ? `${JSON.stringify(e)}\n` : `${eventLine(e)}\n`);
          },
          ac.signal,
        ),
      );
    });

  busOptions(fleet.command('analyze'))
    .description("one VM's failure across every host that ran it: one timeline on the bus's clock, each host's clock said")
    .argument('<vm>')
    .option('--at <when>', 'a failure near this time: a date or a duration back from now (10m)')
    .option('--window <duration>', 'how far before the failure to look; a quarter of it after', '2m')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json', 'html']).default('text'))
    .action(async (vm: string, o: BusOptions & { at?: string; window: string; output: 'text' | 'json' | 'html' }) => {
      const events: BusEvent[] = [];
      await withBus(o, (bus) => bus.events({ vm }, { follow: false }, (e) => void events.push(e), new AbortController().signal));
      if (!events.length) throw new VesperError(ErrorCode.VM_NOT_FOUND, `no event of VM ${vm} is on the bus`);
      const r = fleetAnalyze(events, {
        vm,
        ...(o.at !== undefined ? { atUs: sinceUs(o.at, Date.now(), '--at') } : { last: true }),
        windowUs: windowUs(o.window),
      });
      if (o.output === 'json') process.stdout.write(`${JSON.stringify(r)}\n`);
      else if (o.output === 'html') process.stdout.write(renderHtml(r.analysis));
      else process.stdout.write(analysisText(r.analysis) + hostsText(r.hosts));
    });
}
