// The agent on an SSH target, as the host reaches it: where `vesper agent install` puts it,
// and the exec channel that carries the protocol. The channel runs the installed relay
// (`vesper-agent relay`, guest-agent/channel/relay.ts), which joins it to the long-lived agent
// daemon's unix socket: frames on the channel's stdin/stdout, the same protocol as on a
// virtio-serial port, and the agent's record ring outlives any one SSH connection.
import { AgentClient, type AgentClientOptions } from '../channel/agent-client.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { SshConnection } from './connect.js';

export interface AgentLayout {
  /** the agent's files: bin/, the bundle, the host's public key, maybe node */
  prefix: string;
  /** the daemon's socket, pid file and (without systemd) log */
  runDir: string;
  /** the systemd unit, where the target has systemd */
  unit: string;
}

export const DEFAULT_AGENT_LAYOUT: AgentLayout = {
  prefix: '/opt/vesper-agent',
  runDir: '/run/vesper-agent',
  unit: 'vesper-agent-ssh.service',
};

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * What the exec channel runs: a wrapper the installer writes, with the relay's flags for this
 * target baked in (with systemd the unit owns the agent; without it the relay starts one).
 */
export function relayCommand(l: AgentLayout = DEFAULT_AGENT_LAYOUT): string {
  return shellQuote(`${l.prefix}/bin/vesper-agent-relay`);
}

/**
 * Opens an exec channel running the relay and completes the agent handshake on it. The
 * channel's stderr (the relay's own words) is kept for the error, never mixed with frames.
 */
export async function openAgentLink(
  conn: SshConnection,
  o: AgentClientOptions & { layout?: AgentLayout; execTimeoutMs?: number } = {},
): Promise<AgentClient> {
  const ch = await conn.exec(relayCommand(o.layout), o.execTimeoutMs ?? 15_000);
  let stderr = '';
  ch.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr = (stderr + d.toString()).slice(0, 4096);
  });
  let exit: number | null = null;
  ch.on('exit', (c: number | null) => (exit = c));
  const c = new AgentClient(ch, o);
  try {
    await c.handshake();
  } catch (err) {
    c.close();
    ch.close();
    const e = VesperError.from(err, ErrorCode.AGENT_NOT_ANSWERING);
    if (exit === 127 || /No such file|not found/.test(stderr))
      throw new VesperError(
        ErrorCode.AGENT_NOT_INSTALLED,
        `${conn.name}: the agent is not installed (${relayCommand(o.layout)}: ${stderr.trim() || `exit ${exit}`})`,
      );
    // An agent that answered with something this host cannot take (bad frames, another protocol
    // version) did answer: its problem keeps its own code.
    const silent = e.code === ErrorCode.DISCONNECTED || e.code === ErrorCode.HANDSHAKE_TIMEOUT || e.code === ErrorCode.AGENT_NOT_ANSWERING;
    throw new VesperError(
      silent ? ErrorCode.AGENT_NOT_ANSWERING : e.code,
      `${conn.name}: ${silent ? 'the agent did not answer over SSH' : 'the agent link over SSH failed'}: ${e.message}${stderr.trim() ? ` (relay: ${stderr.trim()})` : ''}`,
    );
  }
  // The link is over when the channel is: AgentClient sees the stream close.
  return c;
}
