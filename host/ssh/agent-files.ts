// What `vesper agent install` writes on a target, and where: the names inside the prefix,
// the two wrappers, the systemd unit (remote/agent.service) and the commit marker's record.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { relayCommand, shellQuote as q, type AgentLayout } from './agent-link.js';
import unitTemplate from './remote/agent.service';

/** Names inside the prefix. */
export const OWNER_MARK = '.vesper-agent-prefix';
export const MARKER = 'install.json';
export const BUNDLE = 'vesper-agent.mjs';
export const HOST_KEY = 'host.pub';
export const NODE = 'node';
export const AGENT_WRAPPER = 'bin/vesper-agent';
export const RELAY_WRAPPER = 'bin/vesper-agent-relay';
/** in the name of every temporary file an install pushes; a later install removes them */
export const TMP_TAG = '.vesper-tmp.';

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

export function unitPath(l: AgentLayout): string {
  return `/etc/systemd/system/${l.unit}`;
}

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

/**
 * The unit for targets with systemd: the agent daemon on its unix socket. remote/agent.service
 * with the layout's paths filled in; its `##` lines are notes for readers of the template.
 */
export function unitText(l: AgentLayout): string {
  return unitTemplate
    .split('\n')
    .filter((line) => !line.startsWith('##'))
    .join('\n')
    .replaceAll('@PREFIX@', l.prefix)
    .replaceAll('@RUN_DIR@', l.runDir);
}

/** Without systemd: the command that brings the agent up at boot (before any link). */
export function bootCommand(l: AgentLayout): string {
  return `${relayCommand(l)} </dev/null >/dev/null 2>&1`;
}
