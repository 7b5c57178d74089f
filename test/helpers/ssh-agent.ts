// The agent daemon an SSH target runs (installed by installAgent, started by its relay), seen
// from this machine when the target is a loopback sshd: its pid, and a way to stop it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from './wait.js';

/** The agent daemon's pid from the relay's pid file, or 0. */
export function agentPid(runDir: string): number {
  const f = join(runDir, 'agent.pid');
  return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) || 0 : 0;
}

/** A process with this pid exists (signal 0). */
export function alive(pid: number): boolean {
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
