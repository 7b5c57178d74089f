// The agent process on a target: stopping every process that runs this prefix's bundle
// (remote/stop-agent.sh), and asking the running agent who it is (its hello).
import type { AgentClient } from '../channel/agent-client.js';
import { openAgentLink, type AgentLayout } from './agent-link.js';
import { BUNDLE } from './agent-files.js';
import type { SshConnection } from './connect.js';
import stopScript from './remote/stop-agent.sh';
import { sh } from './target-shell.js';

export interface AgentHello {
  version: string;
  pid: number;
  kernel: string;
  hostname: string;
  /** probes loaded now: name#instance */
  probes: string[];
}

/** Pids stopped (agents and relays, TERM then KILL), and those that outlived SIGKILL for 5 s (stuck in the kernel). */
export async function stopAgentProcesses(conn: SshConnection, l: AgentLayout): Promise<{ stopped: number[]; stuck: number[] }> {
  const out = await sh(conn, 'stopping the agent', stopScript, 30_000, [`${l.prefix}/${BUNDLE}`]);
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
