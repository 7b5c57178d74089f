// `vesper agent install` on an SSH target, as a function over one checked SshConnection (the
// CLI and the benchmarks call the same code), in named steps: look at the target, choose the
// node that runs the agent, plan the files, prepare the prefix, push (sftp-push.ts), start
// the agent, and check that it answers.
//
// Install never leaves a half-installed agent: the push commits every file or none, the
// commit marker install.json last. The prefix is vesper's own directory: install refuses one
// that holds anything else, so uninstall (uninstall.ts) may remove it whole.
import { createPublicKey } from 'node:crypto';
import semver from 'semver';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { agentBundlePath } from '../assets.js';
import { DEFAULT_AGENT_LAYOUT, shellQuote as q, type AgentLayout } from './agent-link.js';
import {
  AGENT_WRAPPER,
  agentWrapper,
  bootCommand,
  BUNDLE,
  checkLayout,
  HOST_KEY,
  MARKER,
  NODE,
  OWNER_MARK,
  RELAY_WRAPPER,
  relayWrapper,
  TMP_TAG,
  unitPath,
  unitText,
  type InstallRecord,
} from './agent-files.js';
import { helloFrom, stopAgentProcesses, type AgentHello } from './agent-process.js';
import type { SshConnection } from './connect.js';
import prepareScript from './remote/prepare-prefix.sh';
import { dataSource, fileSource, pushFiles, sha256Buf, type Push, type PushProgress } from './sftp-push.js';
import { factsOf, type Facts } from './target-facts.js';
import { sh, shRun } from './target-shell.js';
import { uninstallAgent } from './uninstall.js';

/** Node versions the agent bundle runs on (package.json's engines). */
export const AGENT_NODE_RANGE = '>=20.19 <21 || >=22';

/** The agent bundle this host pushes when none is given (the package's, or a built checkout's). */
export function defaultBundlePath(): string {
  return agentBundlePath();
}

export interface InstallOptions {
  layout?: AgentLayout;
  /** the host's public signing key (PEM): the agent runs only modules it signed */
  hostPublicPem: string;
  /** the agent bundle to push (default dist/guest-agent/vesper-agent.mjs) */
  bundlePath?: string;
  /** the node executable pushed when the target has no Node >= 20 (default this process's) */
  nodeBinary?: string;
  /** push nodeBinary even when the target has a usable node */
  forceNode?: boolean;
  onProgress?: (p: PushProgress) => void;
  /** one line per step, for people */
  log?: (msg: string) => void;
  /** how long the agent may take to answer after it was started (default 30 s) */
  answerTimeoutMs?: number;
}

export interface InstallReport {
  target: string;
  prefix: string;
  runDir: string;
  systemd: boolean;
  /** systemd: the unit; otherwise the relay starts the agent on the first link */
  startedBy: 'systemd' | 'relay';
  unit: string | null;
  /** without systemd: what to run at boot to have the agent up before the first link */
  bootHint: string | null;
  node: { path: string; version: string; pushed: boolean };
  bundle: { sha256: string; bytes: number };
  /** an agent was running and was restarted onto what was pushed */
  restarted: boolean;
  agent: AgentHello;
  bytesPushed: number;
  /** files already on the target with the same content, not pushed again */
  unchanged: string[];
  seconds: number;
}

type Log = (msg: string) => void;

export async function installAgent(conn: SshConnection, o: InstallOptions): Promise<InstallReport> {
  const t0 = Date.now();
  const l = checkLayout(o.layout ?? DEFAULT_AGENT_LAYOUT);
  const log = o.log ?? (() => {});
  checkHostKey(o.hostPublicPem);
  const facts = await lookAtTarget(conn, l, log);
  const node = chooseNode(conn, facts, o, l, log);
  const plan = await planFiles(l, facts, node, o);
  await preparePrefix(conn, l, facts.systemd);

  const totalBytes = plan.todo.reduce((s, p) => s + p.size, 0);
  log(
    `pushing ${plan.todo.map((p) => p.name).join(', ')} (${(totalBytes / 1e6).toFixed(1)} MB)${plan.unchanged.length ? `; unchanged: ${plan.unchanged.join(', ')}` : ''}`,
  );
  const pushedNode = plan.todo.find((p) => p.name === NODE);
  const bytesPushed = await pushFiles(conn, plan.todo, {
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
    hasSha256sum: facts.hasSha256sum,
    shaNode: pushedNode ?? node.remote,
    ...(pushedNode ? { beforeCommit: (tmpOf) => checkPushedNodeRuns(conn, tmpOf(pushedNode)) } : {}),
  });
  // A node pushed by an earlier install that the target no longer needs (it has its own now).
  if (!node.push && facts.sha.has(NODE)) await sh(conn, 'removing the node no longer needed', `rm -f ${q(`${l.prefix}/${NODE}`)}`);

  const { restarted, bootHint } = await startAgent(conn, l, facts, plan.changed, log);
  log('checking that the agent answers');
  const agent = await awaitHello(conn, l, facts.systemd, o.answerTimeoutMs ?? 30_000);
  if (agent.version !== VESPER_VERSION) log(`warning: the agent says version ${agent.version}, this host is ${VESPER_VERSION}`);
  return {
    target: conn.name,
    prefix: l.prefix,
    runDir: l.runDir,
    systemd: facts.systemd,
    startedBy: facts.systemd ? 'systemd' : 'relay',
    unit: facts.systemd ? l.unit : null,
    bootHint,
    node: plan.record.node,
    bundle: { sha256: plan.bundle.sha256, bytes: plan.bundle.size },
    restarted,
    agent,
    bytesPushed,
    unchanged: plan.unchanged,
    seconds: (Date.now() - t0) / 1000,
  };
}

/** The agent would not start with anything but an ed25519 public key: say so before pushing. */
function checkHostKey(pem: string): void {
  let ok = false;
  try {
    ok = createPublicKey(pem).asymmetricKeyType === 'ed25519';
  } catch {
    ok = false;
  }
  if (!ok) throw new VesperError(ErrorCode.KEY_INVALID, "the host's public key to push is not an ed25519 public key in PEM");
}

/** The target as found; refuses a prefix that holds files that are not vesper's. */
async function lookAtTarget(conn: SshConnection, l: AgentLayout, log: Log): Promise<Facts> {
  const facts = await factsOf(conn, l);
  if (facts.uid !== 0)
    log(`warning: ${conn.name} logs in as uid ${facts.uid}, not root: the agent's probes need root (tracefs, kprobes, /dev/kmsg)`);
  if (facts.prefixUsed && !facts.owned)
    throw new VesperError(
      ErrorCode.USAGE,
      `${conn.name}: ${l.prefix} exists and holds files that are not vesper's; refusing to install into it (uninstall removes the prefix whole): choose an empty or new directory with --prefix`,
    );
  return facts;
}

/** Node's process.arch to what `uname -m` says on a machine node of that arch runs on. */
const ARCH: Record<string, string[]> = { x64: ['x86_64', 'amd64'], arm64: ['aarch64', 'arm64'], arm: ['armv7l', 'armv6l'] };

interface NodeChoice {
  /** push this host's node (the target has none recent enough, or it was asked) */
  push: boolean;
  /** the node pushed */
  local: string;
  /** the node that runs the agent on the target */
  remote: string;
  version: string;
}

/** Which node runs the agent: the target's own when it is recent enough, else ours, pushed. */
function chooseNode(conn: SshConnection, facts: Facts, o: InstallOptions, l: AgentLayout, log: Log): NodeChoice {
  const usable = facts.nodeVersion && semver.satisfies(facts.nodeVersion, AGENT_NODE_RANGE);
  const push = Boolean(o.forceNode) || !usable;
  const local = o.nodeBinary ?? process.execPath;
  if (push) {
    if (!(ARCH[process.arch] ?? [process.arch]).includes(facts.arch))
      throw new VesperError(
        ErrorCode.SSH_REMOTE_FAILED,
        `${conn.name} has no Node ${AGENT_NODE_RANGE} (${facts.nodePath ? `${facts.nodePath} is ${facts.nodeVersion || 'unknown'}` : 'none on PATH'}) and is ${facts.arch}, this host is ${process.arch}: install Node 20 there first`,
      );
    log(
      facts.nodePath && !o.forceNode
        ? `${conn.name}'s node ${facts.nodePath} is ${facts.nodeVersion || 'unusable'}, the agent needs ${AGENT_NODE_RANGE}: pushing this host's node (${process.version})`
        : o.forceNode
          ? `pushing this host's node (${process.version}) as asked`
          : `${conn.name} has no node on PATH: pushing this host's node (${process.version})`,
    );
  }
  return {
    push,
    local,
    remote: push ? `${l.prefix}/${NODE}` : facts.nodePath,
    version: push ? process.version.slice(1) : facts.nodeVersion,
  };
}

interface FilePlan {
  bundle: Push;
  record: InstallRecord;
  /** what is pushed, the commit marker last */
  todo: Push[];
  /** names of files already in place with the same content */
  unchanged: string[];
  /** anything but the marker changes (or there was no marker): the agent is restarted */
  changed: boolean;
}

/**
 * Every file of the install, less those already in place with the same content (an upgrade
 * that only changed the bundle does not push 100 MB of node again); the commit marker
 * install.json is written, last, on every install.
 */
async function planFiles(l: AgentLayout, facts: Facts, node: NodeChoice, o: InstallOptions): Promise<FilePlan> {
  const pushes: Push[] = [];
  if (node.push) pushes.push(await fileSource(`${l.prefix}/${NODE}`, NODE, node.local, 0o755));
  const bundle = await fileSource(`${l.prefix}/${BUNDLE}`, BUNDLE, o.bundlePath ?? defaultBundlePath(), 0o644, ' (run npm run build)');
  pushes.push(bundle);
  pushes.push(dataSource(`${l.prefix}/${HOST_KEY}`, HOST_KEY, o.hostPublicPem, 0o644));
  pushes.push(dataSource(`${l.prefix}/${AGENT_WRAPPER}`, AGENT_WRAPPER, agentWrapper(l, node.remote), 0o755));
  pushes.push(dataSource(`${l.prefix}/${RELAY_WRAPPER}`, RELAY_WRAPPER, relayWrapper(l, facts.systemd), 0o755));
  if (facts.systemd) pushes.push(dataSource(unitPath(l), l.unit, unitText(l), 0o644));

  const record: InstallRecord = {
    version: VESPER_VERSION,
    bundleSha256: bundle.sha256,
    hostKeySha256: sha256Buf(o.hostPublicPem),
    node: { path: node.remote, version: node.version, pushed: node.push },
    systemd: facts.systemd,
    unit: facts.systemd ? l.unit : null,
    runDir: l.runDir,
    installedAt: new Date().toISOString(),
  };

  const relOf = (p: Push): string => (p.final === unitPath(l) ? '' : p.final.slice(l.prefix.length + 1));
  const todo = pushes.filter((p) => facts.sha.get(relOf(p)) !== p.sha256);
  const unchanged = pushes.filter((p) => !todo.includes(p)).map((p) => p.name);
  const changed = todo.length > 0 || !facts.record;
  todo.push(dataSource(`${l.prefix}/${MARKER}`, MARKER, JSON.stringify(record, null, 2) + '\n', 0o644));
  return { bundle, record, todo, unchanged, changed };
}

/** The prefix is ours from here on: created with the mark, stale temporary files removed. */
async function preparePrefix(conn: SshConnection, l: AgentLayout, systemd: boolean): Promise<void> {
  await sh(conn, `preparing ${l.prefix}`, prepareScript, 30_000, [l.prefix, OWNER_MARK, `.*${TMP_TAG}*`, systemd ? '1' : '0']);
}

/** A node pushed from this host must run there (same arch, a libc it links against). */
async function checkPushedNodeRuns(conn: SshConnection, tmp: string): Promise<void> {
  const r = await shRun(conn, `${q(tmp)} -p process.versions.node`);
  if (r.code !== 0 || !semver.satisfies(r.stdout.trim(), AGENT_NODE_RANGE))
    throw new VesperError(
      ErrorCode.SSH_REMOTE_FAILED,
      `${conn.name}: the pushed node does not run there (${r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`}): install Node 20 on the target`,
    );
}

/**
 * Starts the agent, or restarts it onto what was pushed: systemd's unit where there is
 * systemd; elsewhere the old agent is stopped and the relay starts the new one on the first link.
 */
async function startAgent(
  conn: SshConnection,
  l: AgentLayout,
  facts: Facts,
  changed: boolean,
  log: Log,
): Promise<{ restarted: boolean; bootHint: string | null }> {
  if (facts.systemd) {
    const wasActive = facts.unitActive === 'active' || facts.unitActive === 'activating';
    const verb = changed || !wasActive ? 'restart' : 'start';
    log(`systemd: ${verb} ${l.unit} (enabled at boot)`);
    await sh(
      conn,
      `starting ${l.unit}`,
      `systemctl daemon-reload && systemctl enable ${q(l.unit)} 2>&1 && systemctl ${verb} ${q(l.unit)}`,
      60_000,
    );
    return { restarted: wasActive && verb === 'restart', bootHint: null };
  }
  let restarted = false;
  if (changed) {
    const { stopped, stuck } = await stopAgentProcesses(conn, l);
    if (stuck.length)
      throw new VesperError(
        ErrorCode.SSH_REMOTE_FAILED,
        `${conn.name}: the old agent (${stuck.join(' ')}) does not end even after SIGKILL; the new files are in place, the old agent still runs`,
      );
    restarted = stopped.length > 0;
    if (restarted) log(`stopped the running agent (${stopped.join(' ')}) to start it on what was pushed`);
  }
  const bootHint = bootCommand(l);
  log(
    `${conn.name} has no systemd (/run/systemd/system is missing): the agent is started by the relay on the first link (now, by this install). To have it up at boot, run this there at boot (an @reboot crontab line or rc.local): ${bootHint}`,
  );
  return { restarted, bootHint };
}

/** The agent's hello once it is up; an agent that does not answer says where its log is. */
async function awaitHello(conn: SshConnection, l: AgentLayout, systemd: boolean, timeoutMs: number): Promise<AgentHello> {
  try {
    return await helloFrom(conn, l, timeoutMs);
  } catch (err) {
    const e = VesperError.from(err, ErrorCode.AGENT_NOT_ANSWERING);
    const where = systemd ? `journalctl -u ${l.unit}` : `${l.runDir}/agent.log`;
    throw new VesperError(
      e.code === ErrorCode.AGENT_NOT_INSTALLED ? ErrorCode.AGENT_NOT_ANSWERING : e.code,
      `${e.message} (installed, but the agent does not answer: see ${where} on ${conn.name})`,
    );
  }
}

/**
 * For the benchmark (test/bench/ssh.ts reports it as ssh.install_s): a fresh install into an
 * empty prefix under `root` on the target, timed from the first command to the agent's hello,
 * then uninstalled again so that nothing stays behind.
 */
export async function timeFreshInstall(
  conn: SshConnection,
  o: { root: string; hostPublicPem: string; pushNode?: boolean; log?: (m: string) => void },
): Promise<{ seconds: number; report: InstallReport }> {
  const layout: AgentLayout = { ...DEFAULT_AGENT_LAYOUT, prefix: `${o.root}/opt/vesper-agent`, runDir: `${o.root}/run/vesper-agent` };
  const before = await factsOf(conn, checkLayout(layout));
  if (before.prefixUsed || before.record)
    throw new VesperError(ErrorCode.USAGE, `${conn.name}: ${layout.prefix} is not empty: a fresh install needs an empty root`);
  try {
    const report = await installAgent(conn, { layout, hostPublicPem: o.hostPublicPem, forceNode: o.pushNode, log: o.log });
    return { seconds: report.seconds, report };
  } finally {
    if (!conn.isClosed) await uninstallAgent(conn, { layout });
  }
}
