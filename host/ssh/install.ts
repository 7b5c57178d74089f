// `vesper agent install|uninstall|status` on an SSH target, as functions over one checked
// SshConnection (the CLI and the benchmarks call the same code).
//
// Install never leaves a half-installed agent: every file goes over SFTP to a temporary name
// in its final directory, its size and sha256 are checked on the target, and only when every
// file arrived whole are they renamed (posix-rename, or `mv -f`) to their final names, the
// commit marker install.json last. A connection lost mid-way leaves at most temporary files,
// which the next install removes. The prefix is vesper's own directory: install refuses one
// that holds anything else, so uninstall may remove it whole.
import { createHash, createPublicKey } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import semver from 'semver';
import type { SFTPWrapper } from 'ssh2';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import type { AgentClient } from '../channel/agent-client.js';
import { agentBundlePath } from '../assets.js';
import { DEFAULT_AGENT_LAYOUT, openAgentLink, relayCommand, shellQuote as q, type AgentLayout } from './agent-link.js';
import type { SshConnection } from './connect.js';

/** Node versions the agent bundle runs on (package.json's engines). */
export const AGENT_NODE_RANGE = '>=20.19 <21 || >=22';

/** Names inside the prefix. */
const OWNER_MARK = '.vesper-agent-prefix';
const MARKER = 'install.json';
const BUNDLE = 'vesper-agent.mjs';
const HOST_KEY = 'host.pub';
const NODE = 'node';
const TMP_TAG = '.vesper-tmp.';

export function unitPath(l: AgentLayout): string {
  return `/etc/systemd/system/${l.unit}`;
}

/** The agent bundle this host ships (the package's, or a built checkout's). */
export function defaultBundlePath(): string {
  return agentBundlePath();
}

export interface InstallProgress {
  /** the file being pushed (its final path on the target) */
  file: string;
  /** bytes pushed so far, over all files of this install */
  bytes: number;
  /** bytes this install pushes in all */
  totalBytes: number;
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
  onProgress?: (p: InstallProgress) => void;
  /** one line per step, for people */
  log?: (msg: string) => void;
  /** how long the agent may take to answer after it was started (default 30 s) */
  answerTimeoutMs?: number;
}

export interface AgentHello {
  version: string;
  pid: number;
  kernel: string;
  hostname: string;
  /** probes loaded now: name#instance */
  probes: string[];
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

/** What install.json on the target says. */
export interface InstallRecord {
  version: string;
  bundleSha256: string;
  hostKeySha256: string;
  node: { path: string; version: string; pushed: boolean };
  systemd: boolean;
  unit: string | null;
  runDir: string;
  installedAt: string;
}

// ------------------------------------------------------------------ the target, as found

interface Facts {
  uid: number;
  arch: string;
  nodePath: string;
  nodeVersion: string;
  systemd: boolean;
  hasSha256sum: boolean;
  /** the prefix exists and holds something */
  prefixUsed: boolean;
  /** the prefix is vesper's (install created it) */
  owned: boolean;
  /** sha256 of files already in place, by path relative to the prefix ('' for the unit) */
  sha: Map<string, string>;
  record: InstallRecord | null;
  /** pid from the pid file, when that process lives */
  pid: number;
  unitActive: string;
  unitEnabled: string;
}

const EXISTING = [BUNDLE, HOST_KEY, NODE, 'bin/vesper-agent', 'bin/vesper-agent-relay'];

function factsScript(l: AgentLayout): string {
  const p = q(l.prefix);
  const shaOf = (f: string): string =>
    // present: always a line; its sha256 when the target has sha256sum (else empty: pushed again)
    `[ -f ${f} ] && echo "sha:${f}=$(command -v sha256sum >/dev/null 2>&1 && sha256sum < ${f} | cut -d' ' -f1)"`;
  return [
    'echo "uid=$(id -u)"',
    'echo "arch=$(uname -m)"',
    'n=$(command -v node 2>/dev/null)',
    'echo "node=$n"',
    '[ -n "$n" ] && echo "nodever=$("$n" -p process.versions.node 2>/dev/null)"',
    '[ -d /run/systemd/system ] && echo systemd=1',
    'command -v sha256sum >/dev/null 2>&1 && echo sha256sum=1',
    `[ -n "$(ls -A ${p} 2>/dev/null)" ] && echo prefix_used=1`,
    `[ -f ${p}/${OWNER_MARK} ] && echo owned=1`,
    ...EXISTING.map((f) => shaOf(`${p}/${f}`)),
    shaOf(q(unitPath(l))).replace(/sha:[^=]*=/, 'sha:unit='),
    `[ -f ${p}/${MARKER} ] && echo "record=$(tr -d '\\n' < ${p}/${MARKER})"`,
    `pid=$(cat ${q(l.runDir)}/agent.pid 2>/dev/null)`,
    '[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q vesper-agent /proc/$pid/cmdline 2>/dev/null && echo "pid=$pid"',
    `[ -d /run/systemd/system ] && echo "unit_active=$(systemctl is-active ${q(l.unit)} 2>/dev/null)" && echo "unit_enabled=$(systemctl is-enabled ${q(l.unit)} 2>/dev/null)"`,
    'true',
  ].join('\n');
}

/**
 * The script as one brace group: sh parses all of it before running any, so a command that
 * reads stdin cannot eat the rest of the script (and it reads /dev/null instead).
 */
function shRun(conn: SshConnection, script: string, timeoutMs = 30_000): ReturnType<SshConnection['run']> {
  return conn.run('sh -s', { stdin: `{\n${script}\n} </dev/null\n`, timeoutMs });
}

/**
 * Runs a POSIX sh script on the target, whatever the login shell there is (sshd hands a
 * command to the user's shell; the script goes to `sh -s` on stdin instead).
 */
async function sh(conn: SshConnection, what: string, script: string, timeoutMs = 30_000): Promise<string> {
  const r = await shRun(conn, script, timeoutMs);
  if (r.code !== 0)
    throw new VesperError(
      ErrorCode.SSH_REMOTE_FAILED,
      `${conn.name}: ${what} failed (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`}): ${r.stderr.trim() || r.stdout.trim()}`,
    );
  return r.stdout;
}

async function factsOf(conn: SshConnection, l: AgentLayout): Promise<Facts> {
  const out = await sh(conn, 'looking at the target', factsScript(l));
  const kv = new Map<string, string>();
  const sha = new Map<string, string>();
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const k = line.slice(0, eq);
    const v = line.slice(eq + 1).trim();
    if (k.startsWith('sha:')) {
      const path = k.slice(4);
      sha.set(path === 'unit' ? '' : path.slice(l.prefix.length + 1), v);
    } else kv.set(k, v);
  }
  let record: InstallRecord | null = null;
  try {
    record = kv.get('record') ? (JSON.parse(kv.get('record')!) as InstallRecord) : null;
  } catch {
    record = null; // a damaged marker: the install is not whole
  }
  return {
    uid: Number(kv.get('uid') ?? -1),
    arch: kv.get('arch') ?? '',
    nodePath: kv.get('node') ?? '',
    nodeVersion: kv.get('nodever') ?? '',
    systemd: kv.get('systemd') === '1',
    hasSha256sum: kv.get('sha256sum') === '1',
    prefixUsed: kv.get('prefix_used') === '1',
    owned: kv.get('owned') === '1',
    sha,
    record,
    pid: Number(kv.get('pid') ?? 0),
    unitActive: kv.get('unit_active') ?? '',
    unitEnabled: kv.get('unit_enabled') ?? '',
  };
}

const ARCH: Record<string, string[]> = { x64: ['x86_64', 'amd64'], arm64: ['aarch64', 'arm64'], arm: ['armv7l', 'armv6l'] };

/** Paths go into shell commands and unit files: plain characters only, absolute, no `..`. */
export function checkLayout(given: AgentLayout): AgentLayout {
  const l = { ...given, prefix: given.prefix.replace(/(.)\/+$/, '$1'), runDir: given.runDir.replace(/(.)\/+$/, '$1') };
  for (const [k, v] of [
    ['prefix', l.prefix],
    ['run dir', l.runDir],
  ] as const)
    if (!/^\/[A-Za-z0-9_@%+=:,./-]*[A-Za-z0-9_@%+=:,.-]$/.test(v) || v.split('/').some((seg) => seg === '..' || seg === '.'))
      throw new VesperError(
        ErrorCode.USAGE,
        `the agent's ${k} must be an absolute path below / of letters, digits and _@%+=:,.-/ (got ${JSON.stringify(v)})`,
      );
  if (!/^[A-Za-z0-9_.@-]+\.service$/.test(l.unit))
    throw new VesperError(ErrorCode.USAGE, `the unit must be a NAME.service (got ${JSON.stringify(l.unit)})`);
  return l;
}

// ------------------------------------------------------------------ what is written

export function agentWrapper(l: AgentLayout, node: string): string {
  return [
    '#!/bin/sh',
    '# Written by `vesper agent install`: the vesper agent bundle on this node.',
    `exec ${q(node)} ${q(`${l.prefix}/${BUNDLE}`)} "$@"`,
    '',
  ].join('\n');
}

export function relayWrapper(l: AgentLayout, systemd: boolean): string {
  const args = [`--socket ${q(`${l.runDir}/agent.sock`)}`];
  if (!systemd)
    args.push(
      `--spawn --host-key ${q(`${l.prefix}/${HOST_KEY}`)} --log ${q(`${l.runDir}/agent.log`)} --pid-file ${q(`${l.runDir}/agent.pid`)} --state-file ${q(`${l.runDir}/run-state`)}`,
    );
  return [
    '#!/bin/sh',
    '# Written by `vesper agent install`: what vesper runs over SSH. It joins the SSH channel to the',
    systemd
      ? `# agent daemon's socket; the agent itself is systemd's (${l.unit}).`
      : "# agent daemon's socket, and starts the agent (detached) when none answers: no systemd here.",
    `exec ${q(`${l.prefix}/bin/vesper-agent`)} relay ${args.join(' ')} "$@"`,
    '',
  ].join('\n');
}

/** The unit for targets with systemd: the agent daemon on its unix socket. */
export function unitText(l: AgentLayout): string {
  return [
    '# Written by `vesper agent install`: the vesper agent for links over SSH. vesper runs',
    `# ${l.prefix}/bin/vesper-agent-relay over SSH, which joins its channel to this daemon's socket.`,
    '[Unit]',
    'Description=vesper agent (links over SSH)',
    'After=local-fs.target',
    // A failure detector should keep trying: never give up on restarts.
    'StartLimitIntervalSec=0',
    'IgnoreOnIsolate=yes',
    '',
    '[Service]',
    'Type=exec',
    `ExecStartPre=/bin/mkdir -p -m 0700 ${l.runDir}`,
    // run-state: the next agent reports what a crash of this one lost (tmpfs, like the socket)
    `ExecStart=${l.prefix}/bin/vesper-agent --transport unix:${l.runDir}/agent.sock --host-key ${l.prefix}/${HOST_KEY} --state-file ${l.runDir}/run-state`,
    'Restart=on-failure',
    'RestartSec=1s',
    '# The OOM killer must not take the agent that reports OOM kills.',
    'OOMScoreAdjust=-1000',
    '# Blocking kernel readers (one per CPU per probe instance) run on libuv thread pool.',
    'Environment=UV_THREADPOOL_SIZE=64',
    '# Root, unsandboxed: probes need tracefs, kprobe_events, /dev/kmsg, PSI triggers and cgroupfs.',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** Without systemd: the command that brings the agent up at boot (before any link). */
export function bootCommand(l: AgentLayout): string {
  return `${relayCommand(l)} </dev/null >/dev/null 2>&1`;
}

// ------------------------------------------------------------------ pushing files

interface Push {
  /** absolute final path on the target */
  final: string;
  /** the file's name in reports */
  name: string;
  source: { path: string } | { data: Buffer };
  size: number;
  sha256: string;
  mode: number;
}

function sha256Buf(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', (e) => reject(new VesperError(ErrorCode.USAGE, `cannot read ${path}: ${e.message}`)));
  });
}

async function fileSource(final: string, name: string, path: string, mode: number): Promise<Push> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new VesperError(
      ErrorCode.USAGE,
      `cannot read ${path}: ${(err as Error).message}${name === BUNDLE ? ' (run npm run build)' : ''}`,
    );
  }
  return { final, name, source: { path }, size, sha256: await sha256File(path), mode };
}

function dataSource(final: string, name: string, data: string, mode: number): Push {
  const b = Buffer.from(data);
  return { final, name, source: { data: b }, size: b.length, sha256: sha256Buf(b), mode };
}

function tmpName(final: string, tag: string): string {
  const slash = final.lastIndexOf('/');
  return `${final.slice(0, slash + 1)}.${final.slice(slash + 1)}${TMP_TAG}${tag}`;
}

/**
 * One SFTP request as a promise that also ends when the connection does: ssh2 leaves a
 * fastPut in flight hanging forever when the link drops under it.
 */
function sftpCall(conn: SshConnection, what: string, fn: (cb: (err?: Error | null) => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (err?: Error | null): void => {
      if (done) return;
      done = true;
      if (err) reject(Object.assign(err, { what }));
      else resolve();
    };
    conn.onClose(() => finish(new Error(`connection closed during ${what}`)));
    try {
      fn(finish);
    } catch (err) {
      finish(err as Error);
    }
  });
}

/** An SFTP failure said as one of our codes: a lost connection is VSP_SSH_DISCONNECTED. */
async function sftpError(conn: SshConnection, err: unknown, doing: string): Promise<VesperError> {
  if (err instanceof VesperError) return err;
  // ssh2 fails the request before the connection's close event: give that a moment.
  if (!conn.isClosed)
    await new Promise<void>((r) => {
      const t = setTimeout(r, 500);
      conn.onClose(() => {
        clearTimeout(t);
        r();
      });
    });
  const msg = (err as Error)?.message ?? String(err);
  if (conn.isClosed)
    return new VesperError(
      ErrorCode.SSH_DISCONNECTED,
      `${conn.name}: connection lost while ${doing}; nothing was installed under its final name (run the install again)`,
      msg,
      { cause: err },
    );
  return new VesperError(ErrorCode.SSH_REMOTE_FAILED, `${conn.name}: ${doing}: ${msg}`, '', { cause: err });
}

async function upload(conn: SshConnection, sftp: SFTPWrapper, p: Push, tmp: string, onBytes: (n: number) => void): Promise<void> {
  if ('path' in p.source) {
    const local = p.source.path;
    let last = 0;
    await sftpCall(conn, `upload ${p.name}`, (cb) =>
      sftp.fastPut(
        local,
        tmp,
        {
          mode: p.mode,
          concurrency: 16,
          chunkSize: 32 * 1024,
          step: (total) => {
            onBytes(total - last);
            last = total;
          },
        },
        cb,
      ),
    );
    if (last < p.size) onBytes(p.size - last);
  } else {
    const data = p.source.data;
    await sftpCall(conn, `upload ${p.name}`, (cb) => sftp.writeFile(tmp, data, { mode: p.mode }, cb));
    onBytes(data.length);
  }
  // fastPut/writeFile leave the mode to the umask on some servers: set it outright.
  await sftpCall(conn, `chmod ${p.name}`, (cb) => sftp.chmod(tmp, p.mode, cb));
}

async function renameInto(conn: SshConnection, sftp: SFTPWrapper, from: string, to: string): Promise<void> {
  try {
    await sftpCall(conn, `rename ${from}`, (cb) => sftp.ext_openssh_rename(from, to, cb));
  } catch (err) {
    if (conn.isClosed) throw err;
    // No posix-rename@openssh.com here (SFTP's own RENAME refuses an existing target).
    await sh(conn, `renaming ${from}`, `mv -f ${q(from)} ${q(to)}`);
  }
}

async function remoteSha(conn: SshConnection, facts: Facts, node: string, paths: string[]): Promise<Map<string, string>> {
  if (!paths.length) return new Map();
  const files = paths.map(q).join(' ');
  const cmd = facts.hasSha256sum
    ? `sha256sum ${files}`
    : `${q(node)} -e ${q(
        "const c=require('crypto'),f=require('fs');for(const p of process.argv.slice(1))console.log(c.createHash('sha256').update(f.readFileSync(p)).digest('hex')+'  '+p)",
      )} ${files}`;
  const out = await sh(conn, 'checking what arrived (sha256)', cmd, 120_000);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const mm = /^([0-9a-f]{64})\s+\*?(.+)$/.exec(line.trim());
    if (mm) m.set(mm[2]!, mm[1]!);
  }
  return m;
}

// ------------------------------------------------------------------ the agent process

/** Stops every process running this prefix's bundle (agents and relays), TERM then KILL. */
function stopScript(l: AgentLayout): string {
  const bundle = q(`${l.prefix}/${BUNDLE}`);
  return [
    'pids=""',
    'for d in /proc/[0-9]*; do',
    '  [ "${d#/proc/}" = "$$" ] && continue',
    // argv[1] is the bundle: the agent and its relays (node BUNDLE ...), nothing else
    `  tr '\\0' '\\n' < $d/cmdline 2>/dev/null | sed -n 2p | grep -qxF ${bundle} && pids="$pids \${d#/proc/}"`,
    'done',
    '[ -z "$pids" ] && exit 0',
    'echo "stopped=$pids"',
    'kill -TERM $pids 2>/dev/null',
    'i=0',
    'while [ $i -lt 100 ]; do',
    '  alive=""',
    '  for p in $pids; do kill -0 $p 2>/dev/null && alive="$alive $p"; done',
    '  [ -z "$alive" ] && exit 0',
    '  sleep 0.1; i=$((i+1))',
    'done',
    'kill -KILL $alive 2>/dev/null',
    // Gone once the kernel lets go of them (a task in uninterruptible sleep takes its time).
    'i=0',
    'while [ $i -lt 50 ]; do',
    '  stuck=""',
    '  for p in $alive; do kill -0 $p 2>/dev/null && stuck="$stuck $p"; done',
    '  [ -z "$stuck" ] && exit 0',
    '  sleep 0.1; i=$((i+1))',
    'done',
    'echo "stuck=$stuck"',
    'true',
  ].join('\n');
}

/** Pids stopped, and those that outlived SIGKILL for 5 s (stuck in the kernel). */
async function stopAgentProcesses(conn: SshConnection, l: AgentLayout): Promise<{ stopped: number[]; stuck: number[] }> {
  const out = await sh(conn, 'stopping the agent', stopScript(l));
  const pids = (key: string): number[] => {
    const m = new RegExp(`^${key}=(.*)$`, 'm').exec(out);
    return m ? m[1]!.trim().split(/\s+/).filter(Boolean).map(Number) : [];
  };
  return { stopped: pids('stopped'), stuck: pids('stuck') };
}

function helloOf(c: AgentClient): AgentHello {
  const h = c.hello;
  return {
    version: h.agentVersion,
    pid: h.agentPid,
    kernel: h.kernelRelease,
    hostname: h.hostname,
    probes: (h.loaded ?? []).map((p) => `${p.name}#${p.instance}`),
  };
}

/**
 * Opens a link, reads the hello and closes it. It acknowledges nothing (records stay in the
 * agent's ring for vesperd); the agent takes one link at a time, so a vesperd link to this
 * target is replaced and reconnects.
 */
export async function helloFrom(conn: SshConnection, l: AgentLayout, timeoutMs = 15_000): Promise<AgentHello> {
  const c = await openAgentLink(conn, { layout: l, autoAck: false, handshakeTimeoutMs: timeoutMs, execTimeoutMs: timeoutMs });
  try {
    return helloOf(c);
  } finally {
    c.close();
  }
}

// ------------------------------------------------------------------ install

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

export async function installAgent(conn: SshConnection, o: InstallOptions): Promise<InstallReport> {
  const t0 = Date.now();
  const l = checkLayout(o.layout ?? DEFAULT_AGENT_LAYOUT);
  const log = o.log ?? (() => {});
  checkHostKey(o.hostPublicPem);
  const facts = await factsOf(conn, l);
  if (facts.uid !== 0)
    log(`warning: ${conn.name} logs in as uid ${facts.uid}, not root: the agent's probes need root (tracefs, kprobes, /dev/kmsg)`);
  if (facts.prefixUsed && !facts.owned)
    throw new VesperError(
      ErrorCode.USAGE,
      `${conn.name}: ${l.prefix} exists and holds files that are not vesper's; refusing to install into it (uninstall removes the prefix whole): choose an empty or new directory with --prefix`,
    );

  // Which node runs the agent: the target's own when it is recent enough, else ours, pushed.
  const usable = facts.nodeVersion && semver.satisfies(facts.nodeVersion, AGENT_NODE_RANGE);
  const pushNode = Boolean(o.forceNode) || !usable;
  const nodeLocal = o.nodeBinary ?? process.execPath;
  if (pushNode) {
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
  const nodeRemote = pushNode ? `${l.prefix}/${NODE}` : facts.nodePath;

  const bundlePath = o.bundlePath ?? defaultBundlePath();
  const pushes: Push[] = [];
  if (pushNode) pushes.push(await fileSource(`${l.prefix}/${NODE}`, NODE, nodeLocal, 0o755));
  const bundle = await fileSource(`${l.prefix}/${BUNDLE}`, BUNDLE, bundlePath, 0o644);
  pushes.push(bundle);
  pushes.push(dataSource(`${l.prefix}/${HOST_KEY}`, HOST_KEY, o.hostPublicPem, 0o644));
  pushes.push(dataSource(`${l.prefix}/bin/vesper-agent`, 'bin/vesper-agent', agentWrapper(l, nodeRemote), 0o755));
  pushes.push(dataSource(`${l.prefix}/bin/vesper-agent-relay`, 'bin/vesper-agent-relay', relayWrapper(l, facts.systemd), 0o755));
  if (facts.systemd) pushes.push(dataSource(unitPath(l), l.unit, unitText(l), 0o644));

  const nodeVersion = pushNode ? process.version.slice(1) : facts.nodeVersion;
  const record: InstallRecord = {
    version: VESPER_VERSION,
    bundleSha256: bundle.sha256,
    hostKeySha256: sha256Buf(o.hostPublicPem),
    node: { path: nodeRemote, version: nodeVersion, pushed: pushNode },
    systemd: facts.systemd,
    unit: facts.systemd ? l.unit : null,
    runDir: l.runDir,
    installedAt: new Date().toISOString(),
  };

  // Files already in place with the same content are not pushed again (an upgrade that only
  // changed the bundle does not push 100 MB of node again).
  const relOf = (p: Push): string => (p.final === unitPath(l) ? '' : p.final.slice(l.prefix.length + 1));
  const todo = pushes.filter((p) => facts.sha.get(relOf(p)) !== p.sha256);
  const unchanged = pushes.filter((p) => !todo.includes(p)).map((p) => p.name);
  const changed = todo.length > 0 || !facts.record;
  // install.json is the commit marker: written, last, on every install.
  const marker = dataSource(`${l.prefix}/${MARKER}`, MARKER, JSON.stringify(record, null, 2) + '\n', 0o644);
  todo.push(marker);

  // The prefix is ours from here on: created with the mark, stale temporary files removed.
  const tmpGlob = `-name ${q(`.*${TMP_TAG}*`)}`;
  await sh(
    conn,
    `preparing ${l.prefix}`,
    [
      `mkdir -p ${q(`${l.prefix}/bin`)}`,
      `chmod 0755 ${q(l.prefix)}`,
      `touch ${q(`${l.prefix}/${OWNER_MARK}`)}`,
      `find ${q(l.prefix)} -maxdepth 2 ${tmpGlob} -exec rm -f {} +`,
      facts.systemd ? `find /etc/systemd/system -maxdepth 1 ${tmpGlob} -exec rm -f {} +` : 'true',
    ].join(' && '),
  );

  const totalBytes = todo.reduce((s, p) => s + p.size, 0);
  let bytes = 0;
  let current = '';
  const onBytes = (n: number): void => {
    bytes += n;
    o.onProgress?.({ file: current, bytes, totalBytes });
  };
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const tmps = new Map<Push, string>(todo.map((p) => [p, tmpName(p.final, tag)]));
  log(
    `pushing ${todo.map((p) => p.name).join(', ')} (${(totalBytes / 1e6).toFixed(1)} MB)${unchanged.length ? `; unchanged: ${unchanged.join(', ')}` : ''}`,
  );

  const sftp = await conn.sftp();
  try {
    for (const p of todo) {
      current = p.final;
      try {
        await upload(conn, sftp, p, tmps.get(p)!, onBytes);
      } catch (err) {
        throw await sftpError(conn, err, `pushing ${p.final} (${bytes} of ${totalBytes} bytes pushed)`);
      }
    }

    // Every file whole? Size by SFTP, content by sha256 on the target.
    for (const p of todo) {
      const tmp = tmps.get(p)!;
      let size = -1;
      try {
        size = await new Promise<number>((resolve, reject) => {
          conn.onClose(() => reject(new Error('connection closed')));
          sftp.stat(tmp, (err, st) => (err ? reject(err) : resolve(st.size)));
        });
      } catch (err) {
        throw await sftpError(conn, err, `checking ${tmp}`);
      }
      if (size !== p.size)
        throw new VesperError(
          ErrorCode.SSH_REMOTE_FAILED,
          `${conn.name}: ${tmp} has ${size} bytes, ${p.size} were sent (a full disk?); nothing was installed`,
        );
    }
    const pushedNode = todo.find((p) => p.name === NODE);
    const shas = await remoteSha(conn, facts, pushedNode ? tmps.get(pushedNode)! : nodeRemote, [...tmps.values()]);
    for (const p of todo) {
      const tmp = tmps.get(p)!;
      const got = shas.get(tmp);
      if (got !== p.sha256)
        throw new VesperError(
          ErrorCode.SSH_REMOTE_FAILED,
          `${conn.name}: ${tmp} arrived damaged (sha256 ${got ?? 'unreadable'}, sent ${p.sha256}); nothing was installed`,
        );
    }
    if (pushedNode) {
      const r = await shRun(conn, `${q(tmps.get(pushedNode)!)} -p process.versions.node`);
      if (r.code !== 0 || !semver.satisfies(r.stdout.trim(), AGENT_NODE_RANGE))
        throw new VesperError(
          ErrorCode.SSH_REMOTE_FAILED,
          `${conn.name}: the pushed node does not run there (${r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`}): install Node 20 on the target`,
        );
    }

    // Commit: final names, the relay wrapper (what makes the agent reachable) and the marker last.
    for (const p of todo) await renameInto(conn, sftp, tmps.get(p)!, p.final);
  } catch (err) {
    if (!conn.isClosed)
      await shRun(conn, `rm -f ${[...tmps.values()].map(q).join(' ')}`).catch(() => {
        /* best effort; the next install removes them too */
      });
    throw err;
  } finally {
    sftp.end();
  }
  current = '';
  // A node pushed by an earlier install that the target no longer needs (it has its own now).
  if (!pushNode && facts.sha.has(NODE)) await sh(conn, 'removing the node no longer needed', `rm -f ${q(`${l.prefix}/${NODE}`)}`);

  // Start, or restart onto what was pushed.
  let restarted = false;
  let bootHint: string | null = null;
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
    restarted = wasActive && verb === 'restart';
  } else {
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
    bootHint = bootCommand(l);
    log(
      `${conn.name} has no systemd (/run/systemd/system is missing): the agent is started by the relay on the first link (now, by this install). To have it up at boot, run this there at boot (an @reboot crontab line or rc.local): ${bootHint}`,
    );
  }

  log('checking that the agent answers');
  let agent: AgentHello;
  try {
    agent = await helloFrom(conn, l, o.answerTimeoutMs ?? 30_000);
  } catch (err) {
    const e = VesperError.from(err, ErrorCode.AGENT_NOT_ANSWERING);
    const where = facts.systemd ? `journalctl -u ${l.unit}` : `${l.runDir}/agent.log`;
    throw new VesperError(
      e.code === ErrorCode.AGENT_NOT_INSTALLED ? ErrorCode.AGENT_NOT_ANSWERING : e.code,
      `${e.message} (installed, but the agent does not answer: see ${where} on ${conn.name})`,
    );
  }
  if (agent.version !== VESPER_VERSION) log(`warning: the agent says version ${agent.version}, this host is ${VESPER_VERSION}`);
  return {
    target: conn.name,
    prefix: l.prefix,
    runDir: l.runDir,
    systemd: facts.systemd,
    startedBy: facts.systemd ? 'systemd' : 'relay',
    unit: facts.systemd ? l.unit : null,
    bootHint,
    node: record.node,
    bundle: { sha256: bundle.sha256, bytes: bundle.size },
    restarted,
    agent,
    bytesPushed: bytes,
    unchanged,
    seconds: (Date.now() - t0) / 1000,
  };
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

// ------------------------------------------------------------------ uninstall

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

/**
 * Stops the agent and removes the unit, the prefix and the run dir. Nothing installed is not
 * an error: the report says so (`removed: false`), so that uninstall can be repeated, as HA
 * tooling does.
 */
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
  const r = q(l.runDir);
  const out = await sh(
    conn,
    `removing ${l.prefix} and ${l.runDir}`,
    [
      `[ -f ${q(`${l.prefix}/${OWNER_MARK}`)} ] && rm -rf ${q(l.prefix)} && echo prefix=1`,
      `[ -d ${r} ] && rm -f ${r}/agent.sock ${r}/agent.pid ${r}/agent.log ${r}/run-state && echo rundir_seen=1 && rmdir ${r} 2>/dev/null && echo rundir=1`,
      `[ -d ${r} ] && ls -A ${r} | sed 's/^/left=/'`,
      'true',
    ].join('\n'),
  );
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

// ------------------------------------------------------------------ status

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
  const installed = facts.record !== null && facts.sha.has('bin/vesper-agent-relay');
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
