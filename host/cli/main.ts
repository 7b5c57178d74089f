// `vesper`: the manager's command line, virsh-style verbs. Read commands take -o table|json;
// logs and errors go to stderr, results to stdout; an error prints its stable code and sets
// the exit status from proto/errors.ts. Every verb except `daemon` talks to vesperd's socket.
import { Command, Option } from 'commander';
import type { apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError, exitStatusFor } from '../../proto/errors.js';
import { ACTION_NAMES, ACTION_USAGE } from '../actions/parse.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { parseDuration } from '../config/units.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../config/load.js';
import { metricsListenText } from '../config/metrics-config.js';
import { renderHtml } from '../analysis/report-html.js';
import { analysisText } from '../analysis/text.js';
import type { Analysis } from '../analysis/types.js';
import { DEFAULT_ALERT_SOCKET, alertEvent } from '../pacemaker/alert-event.js';
import { sendAlert } from './alert-send.js';
import { addAgentCommands } from './agent.js';
import { addChannelCommands } from './channel.js';
import { addFailoverCommand } from './failover.js';
import { addFleetCommands } from './fleet.js';
import { addStoreCommands } from './export-commands.js';
import { ApiClient, DEFAULT_SOCKET } from './api-client.js';
import { DEFAULT_TAIL } from '../daemon/api-server.js';
import { printEvents, printFilters, printParams, printProbes, printStatus, printVms, type Output } from './output.js';
import { printDaemonStatus } from './daemon-status.js';

const outputOption = (): Option => new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table');

function socketOf(cmd: Command): string {
  return cmd.optsWithGlobals<{ socket?: string }>().socket ?? process.env['VESPER_SOCKET'] ?? DEFAULT_SOCKET;
}

async function withClient<T>(cmd: Command, fn: (c: ApiClient) => Promise<T>): Promise<T> {
  const c = await ApiClient.connect(socketOf(cmd));
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** "k=v" words into a map; a word without "=" is a usage error. */
export function keyValues(words: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const w of words) {
    const eq = w.indexOf('=');
    if (eq <= 0) throw new VesperError(ErrorCode.USAGE, `expected NAME=VALUE, got ${JSON.stringify(w)}`);
    out[w.slice(0, eq)] = w.slice(eq + 1);
  }
  return out;
}

/** --since (and --at): a duration back from now (90s, 15m, 2h, 7d) or a date; host time in µs. */
export function sinceUs(text: string, now = Date.now(), option = '--since'): number {
  try {
    return (now - parseDuration(text)) * 1000; // the config file's durations (90s, 1h30m, 7d)
  } catch {
    /* not a duration: a date? */
  }
  const t = Date.parse(text);
  if (Number.isNaN(t))
    throw new VesperError(ErrorCode.USAGE, `${option}: expected a duration (90s, 15m, 2h, 7d) or a date, got ${JSON.stringify(text)}`);
  return t * 1000;
}

/** --window: a duration, in µs. */
export function windowUs(text: string): number {
  try {
    return parseDuration(text) * 1000;
  } catch (err) {
    throw new VesperError(ErrorCode.USAGE, `--window: ${(err as Error).message}`);
  }
}

function positiveInt(what: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new VesperError(ErrorCode.USAGE, `${what}: expected a whole number, got ${JSON.stringify(v)}`);
    return n;
  };
}

export function buildProgram(): Command {
  const program = new Command('vesper')
    .description('event-driven failure detection for virtual machines')
    .version(VESPER_VERSION)
    .option('--socket <path>', `vesperd's API socket (env VESPER_SOCKET; default ${DEFAULT_SOCKET})`)
    .enablePositionalOptions() // `filter set ... action failover --standby-uri URI`: the action's own options
    .showHelpAfterError()
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      // commander's usage errors carry the code every other error of ours has
      outputError: (s, write) => write(`vesper: ${ErrorCode.USAGE}: ${s.replace(/^error: /, '')}`),
    });
  program.exitOverride();

  program
    .command('list')
    .description('VMs vesperd knows, their link to the agent and attached probes')
    .addOption(outputOption())
    .action(async (o: Output, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ list: {} }));
      printVms(r.vms?.vms ?? [], o);
    });

  program
    .command('status')
    .description(
      'one VM in detail (libvirt state, agent, link, probes, records); without a VM, vesperd itself (version, uptime, store, sinks)',
    )
    .argument('[vm]')
    .addOption(outputOption())
    .action(async (vm: string | undefined, o: Output, cmd: Command) => {
      if (vm === undefined) {
        const r = await withClient(cmd, (c) => c.request({ daemon: {} }));
        printDaemonStatus(r.daemon ?? {}, o);
        return;
      }
      const r = await withClient(cmd, (c) => c.request({ status: { vm } }));
      printStatus(r.vm ?? {}, o);
    });

  addStoreCommands(program, withClient);

  program
    .command('probes')
    .description('probe modules vesperd can attach, with their events and parameters')
    .addOption(outputOption())
    .action(async (o: Output, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ probes: {} }));
      printProbes(r.probes?.probes ?? [], o);
    });

  program
    .command('attach')
    .description('attach probes to a VM (remembered: pushed again after a guest reboot or a vesperd restart)')
    .argument('<vm>')
    .argument('<probe...>')
    .option('-p, --param <name=value>', 'a probe parameter (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('-n, --instances <n>', 'instances of each probe', positiveInt('--instances'))
    .addOption(outputOption())
    .action(async (vm: string, probes: string[], o: Output & { param: string[]; instances?: number }, cmd: Command) => {
      const params = keyValues(o.param);
      const r = await withClient(cmd, (c) => c.request({ attach: { vm, probes, params, instances: o.instances ?? 0 } }));
      const attached = r.attached?.attached ?? [];
      if (o.output === 'json')
        process.stdout.write(
          `${JSON.stringify(
            attached.map((a) => ({
              name: a.name,
              instances: a.instances,
              params: a.params ?? {},
              loaded: Boolean(a.loaded),
              pending: a.pending ?? '',
              warnings: (a.warnings ?? []).map((w) => ({ code: w.code ?? '', message: w.message ?? '' })),
            })),
          )}\n`,
        );
      else
        for (const a of attached) {
          process.stdout.write(
            `attached ${a.name} to ${vm} (${a.instances} instance${a.instances === 1 ? '' : 's'}${a.loaded ? ', loaded' : a.pending ? `; ${a.pending}` : ', pushed when the agent connects'})\n`,
          );
          // what the guest's kernel lacks that the probe runs without: said, never silently ignored
          for (const w of a.warnings ?? []) process.stdout.write(`  ${w.code}: ${w.message}\n`);
        }
    });

  program
    .command('detach')
    .description('detach probes from a VM')
    .argument('<vm>')
    .argument('<probe...>')
    .action(async (vm: string, probes: string[], _o: unknown, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ detach: { vm, probes } }));
      process.stdout.write(`${r.ok?.message ?? 'detached'}\n`);
    });

  const param = program.command('param').description("a plugin's parameters on a VM, set through the framework");
  param
    .command('get')
    .argument('<vm>')
    .argument('<plugin>')
    .addOption(outputOption())
    .action(async (vm: string, plugin: string, o: Output, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ paramGet: { vm, plugin } }));
      printParams(r.params?.params ?? {}, o);
    });
  param
    .command('set')
    .argument('<vm>')
    .argument('<plugin>')
    .argument('<name=value...>')
    .option('-i, --instance <n>', 'one instance only (default: all)', positiveInt('--instance'))
    .addOption(outputOption())
    .action(async (vm: string, plugin: string, kv: string[], o: Output & { instance?: number }, cmd: Command) => {
      const params = keyValues(kv);
      const r = await withClient(cmd, (c) => c.request({ paramSet: { vm, plugin, instance: o.instance ?? -1, params } }));
      printParams(r.params?.params ?? {}, o);
    });

  const filter = program
    .command('filter')
    .enablePositionalOptions()
    .description('the filter table: per (plugin, instance, event), notify, discard or run an action');
  filter
    .command('list')
    .addOption(outputOption())
    .action(async (o: Output, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ filterList: {} }));
      printFilters(r.filters?.rules ?? [], o);
    });
  filter
    .command('set')
    .description("PLUGIN INSTANCE EVENT notify|discard|action NAME [ARG...]; '*' matches anything")
    .argument('<plugin>')
    .argument('<instance>')
    .argument('<event>')
    .argument('<decision>')
    .argument('[action...]')
    .option('--vm <vm>', 'only for this VM', '*')
    .passThroughOptions()
    .action(
      async (plugin: string, instance: string, event: string, decision: string, action: string[], o: { vm: string }, cmd: Command) => {
        const rule = ruleOf(o.vm, plugin, instance, event, decision, action);
        await withClient(cmd, (c) => c.request({ filterSet: { rule } }));
        process.stdout.write(`filter set: ${o.vm} ${plugin} ${instance} ${event} -> ${[decision, ...action].join(' ')}\n`);
      },
    );
  filter
    .command('clear')
    .description('remove one rule (by its key) or, with --all, every rule')
    .argument('[plugin]')
    .argument('[instance]')
    .argument('[event]')
    .option('--vm <vm>', 'the rule is for this VM', '*')
    .option('--all', 'remove every rule')
    .action(
      async (
        plugin: string | undefined,
        instance: string | undefined,
        event: string | undefined,
        o: { vm: string; all?: boolean },
        cmd: Command,
      ) => {
        if (!o.all && (!plugin || !instance || !event))
          throw new VesperError(ErrorCode.USAGE, 'filter clear needs PLUGIN INSTANCE EVENT, or --all');
        const rule = o.all ? null : { vm: o.vm, plugin, instance, event };
        const r = await withClient(cmd, (c) => c.request({ filterClear: { all: Boolean(o.all), rule } }));
        process.stdout.write(`${r.ok?.message ?? 'cleared'}\n`);
      },
    );

  program
    .command('events')
    .description(
      `stored events, oldest first: the newest ${DEFAULT_TAIL} (or -n N); with --since/--until every event of the range; with --after-id every later one; -f keeps following new ones`,
    )
    .option('-f, --follow', 'after the past events, keep printing new ones as they come')
    .option('--vm <vm>')
    .option('--plugin <plugin>')
    .option('--event <event>')
    .option('--since <when>', 'from this time: a duration back from now (90s, 15m, 2h, 7d) or a date')
    .option('--until <when>', 'before this time: a duration back from now or a date')
    .option(
      '--after-id <id>',
      'only events after this id (every JSON line has its id): resume exactly where a reader stopped',
      positiveInt('--after-id'),
    )
    .option(
      '-n, --limit <n>',
      `at most this many past events: the newest (default ${DEFAULT_TAIL} without a range); with --after-id the first`,
      positiveInt('--limit'),
    )
    .option('--all', 'include events the filter discarded (stored and followed alike)')
    .addOption(outputOption())
    .action(
      async (
        o: Output & {
          follow?: boolean;
          vm?: string;
          plugin?: string;
          event?: string;
          since?: string;
          until?: string;
          afterId?: number;
          limit?: number;
          all?: boolean;
        },
        cmd: Command,
      ) => {
        if (o.follow && o.until !== undefined) throw new VesperError(ErrorCode.USAGE, '--until and -f do not go together');
        if (o.limit === 0) throw new VesperError(ErrorCode.USAGE, '--limit: expected at least 1');
        const req: apipb.IRequest = {
          events: {
            vm: o.vm ?? '',
            plugin: o.plugin ?? '',
            event: o.event ?? '',
            sinceUs: o.since ? sinceUs(o.since) : 0,
            untilUs: o.until ? sinceUs(o.until, Date.now(), '--until') : 0,
            afterId: o.afterId ?? 0,
            limit: o.limit ?? 0,
            follow: Boolean(o.follow),
            includeDiscarded: Boolean(o.all),
          },
        };
        const c = await ApiClient.connect(socketOf(cmd));
        await new Promise<void>((resolve, reject) => {
          const stop = (): void => {
            c.close();
            resolve();
          };
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
          process.stdout.once('error', stop); // a closed pipe (| head)
          let header = true;
          let lastId = o.afterId ?? 0;
          c.stream(req, (r) => {
            if (r.error) {
              c.close();
              reject(VesperError.fromWire(r.error));
              return;
            }
            const evs = r.events?.events ?? [];
            if (r.events?.missed) process.stderr.write(`vesper: ${r.events.missed} events were missed (this reader was too slow)\n`);
            if (evs.length) {
              printEvents(evs, o, header);
              header = false;
              lastId = Number(evs[evs.length - 1]!.id ?? lastId);
            }
            if (r.events?.truncated)
              process.stderr.write(
                o.afterId !== undefined
                  ? `vesper: more events follow; the next ones: --after-id ${lastId}\n`
                  : `vesper: older events are not shown; more with -n N, a range with --since/--until, or everything after an id with --after-id ID\n`,
              );
            if (r.done) {
              if (header && o.output === 'table') printEvents([], o, true); // an empty answer still has its header
              stop();
            }
          });
        });
      },
    );

  program
    .command('analyze')
    .description('what happened to a VM around a failure: verdicts with the events they rest on, then the timeline')
    .argument('<vm>')
    .option('--at <when>', 'a failure near this time: a date (2026-11-22T10:31:00Z) or a duration back from now (10m)')
    .option('--last', 'the most recent failure-like event stored for the VM (the default)')
    .option('--window <duration>', 'how far before the failure to look; a quarter of it after', '2m')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json', 'html']).default('text'))
    .action(async (vm: string, o: { at?: string; last?: boolean; window: string; output: 'text' | 'json' | 'html' }, cmd: Command) => {
      if (o.at !== undefined && o.last) throw new VesperError(ErrorCode.USAGE, 'give --at TIME or --last, not both');
      const req: apipb.IRequest = {
        analyze: {
          vm,
          atUs: o.at !== undefined ? sinceUs(o.at, Date.now(), '--at') : 0,
          last: o.at === undefined,
          windowUs: windowUs(o.window),
        },
      };
      const r = await withClient(cmd, (c) => c.request(req));
      const json = r.analysis?.json ?? '';
      if (o.output === 'json') {
        process.stdout.write(`${json}\n`);
        return;
      }
      let a: Analysis;
      try {
        a = JSON.parse(json) as Analysis;
      } catch (err) {
        throw new VesperError(ErrorCode.MESSAGE_DECODE, `vesperd's analysis is not JSON: ${(err as Error).message}`);
      }
      process.stdout.write(o.output === 'html' ? renderHtml(a) : analysisText(a));
    });

  // Not for people: Pacemaker's alert agent (host/pacemaker/alert-agent.sh) runs it as
  // hacluster, with the alert in CRM_alert_* variables. Its default socket is the alert socket,
  // which hacluster may use; --socket or VESPER_SOCKET point it elsewhere.
  program
    .command('alert-pacemaker', { hidden: true })
    .description("send the Pacemaker alert in this environment's CRM_alert_* variables to vesperd (what the alert agent runs)")
    .option('--timeout <duration>', 'give up after this long, connecting included', '5s')
    .option('--dry-run', 'print the event instead of sending it')
    .action(async (o: { timeout: string; dryRun?: boolean }, cmd: Command) => {
      let ms: number;
      try {
        ms = parseDuration(o.timeout);
      } catch (err) {
        throw new VesperError(ErrorCode.USAGE, `--timeout: ${(err as Error).message}`);
      }
      if (o.dryRun) {
        const { event, payload } = alertEvent(process.env);
        process.stdout.write(`${JSON.stringify({ plugin: 'pacemaker', vm: '', event, payload })}\n`);
        return;
      }
      const socket = cmd.optsWithGlobals<{ socket?: string }>().socket ?? process.env['VESPER_SOCKET'] ?? DEFAULT_ALERT_SOCKET;
      process.stdout.write(`${await sendAlert({ env: process.env, socket, timeoutMs: ms })}\n`);
    });

  program
    .command('daemon')
    .description('run vesperd in the foreground (what the systemd unit starts)')
    .option('-c, --config <file>', 'YAML config file (default /etc/vesper/vesper.yaml if it exists)')
    .action(async (o: { config?: string }) => {
      const { runDaemon } = await import('../daemon/run.js');
      await runDaemon({ configPath: o.config });
    });

  program
    .command('config')
    .description("vesperd's configuration file")
    .command('check')
    .description('check a config file without starting anything (exit 0: sound; 1: every mistake listed, FILE:LINE:COL)')
    .argument('[file]', 'the file (default /etc/vesper/vesper.yaml)')
    .action((file: string | undefined) => {
      const path = file ?? DEFAULT_CONFIG_PATH;
      try {
        const c = loadConfig(path);
        const n = (k: number, what: string): string => `${k} ${what}${k === 1 ? '' : 's'}`;
        process.stdout.write(
          `${path}: configuration OK (${n(c.filters.length, 'filter')}, ${n(c.attach.length, 'attach rule')}, ${n(Object.keys(c.ssh.targets).length, 'SSH target')}, metrics ${metricsListenText(c.metrics.listen)})\n`,
        );
      } catch (err) {
        const v = VesperError.from(err);
        process.stderr.write(`vesper: ${v.code}: configuration NOT valid:\n${v.message}\n`);
        process.exitCode = 1;
      }
    });

  addAgentCommands(program); // vesper agent install|uninstall|status: over SSH, from this process
  addChannelCommands(program); // vesper channel add|remove: the agent's channel in a libvirt domain
  addFailoverCommand(program); // vesper failover VM: FenceThenStart by hand, guarded by libvirt's lock manager
  addFleetCommands(program); // vesper fleet list|events|analyze: every host's events, from the NATS bus

  return program;
}

function ruleOf(vm: string, plugin: string, instance: string, event: string, decision: string, action: string[]): apipb.IFilterRule {
  if (!['notify', 'discard', 'action'].includes(decision))
    throw new VesperError(ErrorCode.FILTER_INVALID, `decision must be notify, discard or action, got ${JSON.stringify(decision)}`);
  if (decision === 'action' && !action.length)
    throw new VesperError(ErrorCode.FILTER_INVALID, `action needs a name: ${ACTION_NAMES.map((n) => ACTION_USAGE[n]).join(' | ')}`);
  if (decision !== 'action' && action.length)
    throw new VesperError(ErrorCode.FILTER_INVALID, `${decision} takes no arguments (got ${action.join(' ')})`);
  return { vm, plugin, instance, event, decision, action: action[0] ?? '', args: action.slice(1) };
}

/**
 * The global --socket anywhere on the line (`vesper list --socket S` as well as `vesper
 * --socket S list`): moved before the verb, where commander looks for it. Not after `--`, and
 * not among the words of a filter's action (`filter set ... action exec CMD ARGS`), which are
 * the action's own.
 */
export function hoistGlobalOptions(argv: string[]): string[] {
  const head = argv.slice(0, 2);
  const rest = argv.slice(2);
  const moved: string[] = [];
  const kept: string[] = [];
  const isFilterSet = rest.indexOf('filter') >= 0 && rest.indexOf('set') === rest.indexOf('filter') + 1;
  for (let i = 0; i < rest.length; i++) {
    const w = rest[i]!;
    if (w === '--' || (isFilterSet && w === 'action')) {
      kept.push(...rest.slice(i));
      break;
    }
    if (w === '--socket' && i + 1 < rest.length) {
      moved.push(w, rest[i + 1]!);
      i++;
    } else if (w.startsWith('--socket=')) moved.push(w);
    else kept.push(w);
  }
  return [...head, ...moved, ...kept];
}

export async function main(argv = process.argv): Promise<void> {
  // `vesper analyze ... | head`: a reader that went away ends the output quietly (its status
  // is the command's own), never with an EPIPE stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') return;
    process.stderr.write(`vesper: cannot write the output: ${err.message}\n`);
    process.exitCode = 1;
  });
  const program = buildProgram();
  try {
    await program.parseAsync(hoistGlobalOptions(argv));
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      // commander printed its message (or the help) already; `vesper help` and --help are not errors
      process.exitCode = e.exitCode === 0 ? 0 : exitStatusFor(ErrorCode.USAGE);
      return;
    }
    const v = VesperError.from(err);
    process.stderr.write(`vesper: ${v.code}: ${v.message}\n`);
    process.exitCode = exitStatusFor(v.code);
  }
}
