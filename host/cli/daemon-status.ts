// `vesper status` without a VM: vesperd itself (version, uptime, config, store, metrics, sinks).
import type { apipb } from '../../proto/api-codec.js';
import { printSinks, sinkJson } from './export-commands.js';
import type { Output } from './output.js';

export interface DaemonStatusJson {
  version: string;
  pid: number;
  uptimeS: number;
  config: string | null;
  configLoadedAt: string | null;
  store: { path: string; bytes: number; limitBytes: number; events: number };
  metrics: string;
  vms: number;
  linksUp: number;
  /** as `sinkJson` gives them */
  sinks: Array<Record<string, unknown>>;
}

export function daemonStatusJson(d: apipb.IDaemonDetail): DaemonStatusJson {
  return {
    version: d.version ?? '',
    pid: d.pid ?? 0,
    uptimeS: Math.round(Number(d.uptimeS ?? 0) * 10) / 10,
    config: d.configPath || null,
    configLoadedAt: Number(d.configLoadedAtMs ?? 0) ? new Date(Number(d.configLoadedAtMs)).toISOString() : null,
    store: {
      path: d.storePath ?? '',
      bytes: Number(d.storeBytes ?? 0),
      limitBytes: Number(d.storeLimitBytes ?? 0),
      events: Number(d.storeEvents ?? 0),
    },
    metrics: d.metricsListen || 'off',
    vms: d.vms ?? 0,
    linksUp: d.linksUp ?? 0,
    sinks: (d.sinks ?? []).map(sinkJson),
  };
}

function duration(s: number): string {
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s` : `${Math.floor(s)}s`;
}

function mib(b: number): string {
  return `${(b / 1024 ** 2).toFixed(1)} MiB`;
}

export function printDaemonStatus(d: apipb.IDaemonDetail, o: Output): void {
  const j = daemonStatusJson(d);
  if (o.output === 'json') {
    process.stdout.write(`${JSON.stringify(j)}\n`);
    return;
  }
  const pct = j.store.limitBytes ? ` of ${mib(j.store.limitBytes)} (${((100 * j.store.bytes) / j.store.limitBytes).toFixed(1)} %)` : '';
  const lines = [
    `vesperd:  ${j.version} (pid ${j.pid}), up ${duration(j.uptimeS)}`,
    `config:   ${j.config ?? '(built-in defaults)'}${j.configLoadedAt ? `, loaded ${j.configLoadedAt}` : ''}`,
    `store:    ${j.store.path}: ${j.store.events} events, ${mib(j.store.bytes)}${pct}`,
    `VMs:      ${j.vms}, ${j.linksUp} linked`,
    `metrics:  ${j.metrics}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  printSinks(d.sinks ?? [], o);
}
