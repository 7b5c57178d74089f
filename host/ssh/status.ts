// `vesper agent status` on an SSH target: what is installed there (the commit marker, the
// bundle's sha256 against it, the unit) and whether the agent answers.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DEFAULT_AGENT_LAYOUT, type AgentLayout } from './agent-link.js';
import { BUNDLE, checkLayout, RELAY_WRAPPER, type InstallRecord } from './agent-files.js';
import { helloFrom, type AgentHello } from './agent-process.js';
import type { SshConnection } from './connect.js';
import { factsOf } from './target-facts.js';

export interface StatusReport {
  target: string;
  installed: boolean;
  prefix: string;
  runDir: string;
  record: InstallRecord | null;
  /** sha256 of the bundle as it is on the target now */
  bundleSha256: string | null;
  /** the bundle on the target is the one install recorded */
  bundleIntact: boolean | null;
  systemd: boolean;
  unit: { name: string; active: string; enabled: string } | null;
  /** the agent's pid from the pid file (no systemd), when it runs */
  pid: number | null;
  answering: boolean;
  agent: AgentHello | null;
  /** why it does not answer */
  error: { code: string; message: string } | null;
}

export async function agentStatus(conn: SshConnection, o: { layout?: AgentLayout; answerTimeoutMs?: number } = {}): Promise<StatusReport> {
  const l = checkLayout(o.layout ?? DEFAULT_AGENT_LAYOUT);
  const facts = await factsOf(conn, l);
  const installed = facts.record !== null && facts.sha.has(RELAY_WRAPPER);
  const bundleSha = facts.sha.get(BUNDLE) ?? null;
  const r: StatusReport = {
    target: conn.name,
    installed,
    prefix: l.prefix,
    runDir: l.runDir,
    record: facts.record,
    bundleSha256: bundleSha,
    bundleIntact: facts.record && bundleSha ? facts.record.bundleSha256 === bundleSha : null,
    systemd: facts.systemd,
    unit: facts.systemd && facts.sha.has('') ? { name: l.unit, active: facts.unitActive, enabled: facts.unitEnabled } : null,
    pid: facts.pid || null,
    answering: false,
    agent: null,
    error: null,
  };
  if (!installed) return r;
  if (!facts.systemd && !facts.pid) {
    // Linking now would start it (the relay does, without systemd): say how it is instead.
    r.error = {
      code: ErrorCode.AGENT_NOT_ANSWERING,
      message: `${conn.name}: the agent is not running (no live pid in ${l.runDir}/agent.pid); the next link starts it`,
    };
    return r;
  }
  try {
    r.agent = await helloFrom(conn, l, o.answerTimeoutMs ?? 15_000);
    r.answering = true;
    if (!r.pid) r.pid = r.agent.pid;
  } catch (err) {
    const e = VesperError.from(err, ErrorCode.AGENT_NOT_ANSWERING);
    r.error = { code: e.code, message: e.message };
  }
  return r;
}
