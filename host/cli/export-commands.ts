// `vesper status` without a VM (the export sinks) and `vesper store backup FILE`.
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { apipb } from '../../proto/api-codec.js';
import { formatTable, type Output } from './output.js';

function ago(ms: number, now: number): string {
  if (!ms) return '-';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

export function sinkJson(s: apipb.ISinkState): Record<string, unknown> {
  return {
    name: s.name ?? '',
    kind: s.kind ?? '',
    status: s.status ?? '',
    cursor: Number(s.cursor ?? 0),
    backlog: Number(s.backlog ?? 0),
    delivered: Number(s.delivered ?? 0),
    failures: Number(s.failures ?? 0),
    lost: Number(s.lost ?? 0),
    lastError: s.lastError || null,
    lastErrorAtMs: Number(s.lastErrorAtMs ?? 0) || null,
    lastDeliveredAtMs: Number(s.lastDeliveredAtMs ?? 0) || null,
  };
}

export function printSinks(sinks: apipb.ISinkState[], o: Output): void {
  if (o.output === 'json') {
    process.stdout.write(`${JSON.stringify({ sinks: sinks.map(sinkJson) })}\n`);
    return;
  }
  if (sinks.length === 0) {
    process.stdout.write('sinks: none configured (see docs/operations.md)\n');
    return;
  }
  const now = Date.now();
  const rows = sinks.map((s) => {
    const j = sinkJson(s);
    return [
      String(j.name),
      String(j.kind),
      String(j.status),
      Number(j.cursor),
      Number(j.backlog),
      Number(j.delivered),
      Number(j.failures),
      Number(j.lost),
      ago(Number(j.lastDeliveredAtMs ?? 0), now),
      s.lastError ? `${ago(Number(s.lastErrorAtMs ?? 0), now)}: ${s.lastError}` : '-',
    ];
  });
  process.stdout.write(
    formatTable(['SINK', 'KIND', 'STATUS', 'CURSOR', 'BACKLOG', 'DELIVERED', 'FAILURES', 'LOST', 'LAST DELIVERY', 'LAST ERROR'], rows),
  );
}

type WithClient = <T>(cmd: Command, fn: (c: { request(r: apipb.IRequest): Promise<apipb.IReply> }) => Promise<T>) => Promise<T>;

export function addStoreCommands(program: Command, withClient: WithClient): void {
  const store = program.command('store').description('the event store');
  store
    .command('backup')
    .description('an online, consistent copy of the event store while vesperd runs (SQLite backup API); see docs/operations.md')
    .argument('<file>', 'the copy to write (must not exist)')
    .action(async (file: string, _o: unknown, cmd: Command) => {
      const r = await withClient(cmd, (c) => c.request({ storeBackup: { path: resolve(file) } }));
      process.stdout.write(`${r.ok?.message ?? 'done'}\n`);
    });
}
