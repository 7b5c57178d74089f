// `vesper agent uninstall` on an SSH target: stops the agent and removes the unit, the prefix
// and the run dir. Nothing installed is not an error: the report says so (`removed: false`),
// so that uninstall can be repeated, as HA tooling does.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DEFAULT_AGENT_LAYOUT, shellQuote as q, type AgentLayout } from './agent-link.js';
import { checkLayout, OWNER_MARK, unitPath } from './agent-files.js';
import { stopAgentProcesses } from './agent-process.js';
import type { SshConnection } from './connect.js';
import removeScript from './remote/remove-agent.sh';
import { factsOf } from './target-facts.js';
import { sh, shRun } from './target-shell.js';

export interface UninstallReport {
  target: string;
  /** false: there was nothing to remove (not an error: uninstall is idempotent) */
  removed: boolean;
  /** processes stopped (agents and relays running this prefix's bundle) */
  stopped: number[];
  unitRemoved: boolean;
  prefixRemoved: boolean;
  runDirRemoved: boolean;
  /** what is left and why (a run dir that holds other files) */
  left: string[];
  message: string;
}

export async function uninstallAgent(
  conn: SshConnection,
  o: { layout?: AgentLayout; log?: (m: string) => void } = {},
): Promise<UninstallReport> {
  const l = checkLayout(o.layout ?? DEFAULT_AGENT_LAYOUT);
  const log = o.log ?? (() => {});
  const facts = await factsOf(conn, l);
  const unitThere = facts.sha.has('');
  if (facts.prefixUsed && !facts.owned)
    throw new VesperError(
      ErrorCode.USAGE,
      `${conn.name}: ${l.prefix} holds files that are not vesper's (no ${OWNER_MARK}); refusing to remove it`,
    );
  let unitRemoved = false;
  if (unitThere) {
    log(`systemd: disable --now ${l.unit}, remove ${unitPath(l)}`);
    await shRun(conn, `systemctl disable --now ${q(l.unit)} 2>&1`, 60_000);
    await sh(conn, `removing ${l.unit}`, `rm -f ${q(unitPath(l))} && (systemctl daemon-reload 2>/dev/null || true)`);
    unitRemoved = true;
  }
  const { stopped, stuck } = await stopAgentProcesses(conn, l);
  if (stopped.length) log(`stopped ${stopped.join(' ')}`);
  const out = await sh(conn, `removing ${l.prefix} and ${l.runDir}`, removeScript, 30_000, [l.prefix, OWNER_MARK, l.runDir]);
  const prefixRemoved = /^prefix=1$/m.test(out);
  const runDirRemoved = /^rundir=1$/m.test(out);
  const left = [
    ...stuck.map((p) => `process ${p} (did not end after SIGKILL)`),
    ...[...out.matchAll(/^left=(.*)$/gm)].map((m) => `${l.runDir}/${m[1]}`),
  ];
  const removed = unitRemoved || prefixRemoved || runDirRemoved || stopped.length > 0;
  return {
    target: conn.name,
    removed,
    stopped,
    unitRemoved,
    prefixRemoved,
    runDirRemoved,
    left,
    message: removed
      ? `removed the agent from ${conn.name}${left.length ? ` (left behind: ${left.join(', ')})` : ''}`
      : `nothing to uninstall on ${conn.name}: no agent under ${l.prefix}, no ${l.unit}, no agent running`,
  };
}
