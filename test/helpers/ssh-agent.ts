// The agent laid out on an SSH target the way `vesper agent install` leaves it, for tests of
// the SSH transport that run before (or without) the installer: the bundle and the host's
// public key under a prefix, and the relay wrapper (bin/vesper-agent-relay) that starts the
// agent daemon when none runs. The target is this machine (a loopback sshd), so the files are
// written directly. stopAgent() ends the daemon the relay started.
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../host/probes/package.js';
import { DEFAULT_AGENT_LAYOUT, type AgentLayout } from '../../host/ssh/agent-link.js';
import { sleep } from './wait.js';

export function layOutAgent(prefix: string, runDir: string, hostPublicPem: string): AgentLayout {
  mkdirSync(join(prefix, 'bin'), { recursive: true });
  copyFileSync(join(projectRoot(), 'dist/guest-agent/vesper-agent.mjs'), join(prefix, 'vesper-agent.mjs'));
  writeFileSync(join(prefix, 'host.pub'), hostPublicPem);
  const relay = join(prefix, 'bin', 'vesper-agent-relay');
  writeFileSync(
    relay,
    `#!/bin/sh\nexec ${process.execPath} ${prefix}/vesper-agent.mjs relay --socket ${runDir}/agent.sock --spawn --host-key ${prefix}/host.pub --log ${runDir}/agent.log --pid-file ${runDir}/agent.pid\n`,
  );
  chmodSync(relay, 0o755);
  return { ...DEFAULT_AGENT_LAYOUT, prefix, runDir };
}

/** The agent daemon's pid from the relay's pid file, or 0. */
export function agentPid(runDir: string): number {
  const f = join(runDir, 'agent.pid');
  return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) || 0 : 0;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops the agent daemon the relay started (TERM, then KILL after 5 s); true when one ran. */
export async function stopAgent(runDir: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<boolean> {
  const pid = agentPid(runDir);
  if (!pid || !alive(pid)) return false;
  process.kill(pid, signal);
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 40 && alive(pid); i++) await sleep(50);
  return true;
}
