// vesperd's links to one SSH target. One SSH connection per target, kept while it lives and
// shared by the links made on it; each link is an exec channel running the agent's relay
// (openAgentLink). A link attempt that finds no live connection makes a new one, so a dropped
// connection is made again by the session's own reconnect, with its backoff. A dead peer is
// noticed by ssh2's keepalive (keepaliveMs × keepaliveCountMax): the connection closes, ssh2
// closes its channels, the AgentClient on the channel sees its stream close, and the session
// tells `agent-lost` and starts over, exactly as when a virtio-serial socket closes.
import type { AgentClient, AgentClientOptions } from '../channel/agent-client.js';
import type { LinkOpener } from '../channel/guest-session.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { openAgentLink, type AgentLayout } from './agent-link.js';
import { SshConnection, type HostKeyInfo, type SshOptions } from './connect.js';
import { formatSshTarget } from './target.js';

export interface SshDialerOptions {
  /** how to connect (host keys are never accepted here: vesperd only trusts what is on file) */
  ssh: Omit<SshOptions, 'acceptHostKey'>;
  layout: AgentLayout;
  /** how long opening the exec channel may take (ms, default 15 s) */
  execTimeoutMs?: number;
}

export class SshDialer {
  private conn: SshConnection | null = null;
  private connecting: Promise<SshConnection> | null = null;
  private closed = false;
  /** connections made so far (the first is 1) */
  connections = 0;

  constructor(private readonly o: SshDialerOptions) {}

  get target(): string {
    return formatSshTarget(this.o.ssh.target);
  }

  /** The live connection's host key, or null when there is none. */
  get hostKey(): HostKeyInfo | null {
    return this.conn && !this.conn.isClosed ? this.conn.hostKey : null;
  }

  /** The LinkOpener a GuestSession takes. */
  readonly open: LinkOpener = (agent: AgentClientOptions) => this.openLink(agent);

  private async openLink(agent: AgentClientOptions): Promise<AgentClient> {
    const conn = await this.connection();
    try {
      return await openAgentLink(conn, { ...agent, layout: this.o.layout, execTimeoutMs: this.o.execTimeoutMs });
    } catch (err) {
      // A connection that cannot even open a channel (or lost its peer meanwhile) is not
      // worth keeping: the next attempt makes a new one.
      const e = VesperError.from(err, ErrorCode.AGENT_NOT_ANSWERING);
      if (conn.isClosed || e.code === ErrorCode.SSH_TIMEOUT || e.code === ErrorCode.SSH_DISCONNECTED) this.drop(conn);
      throw e;
    }
  }

  private connection(): Promise<SshConnection> {
    if (this.closed) return Promise.reject(new VesperError(ErrorCode.SSH_DISCONNECTED, `${this.target}: closed`));
    if (this.conn && !this.conn.isClosed) return Promise.resolve(this.conn);
    this.connecting ??= SshConnection.connect(this.o.ssh)
      .then((c) => {
        if (this.closed) {
          c.close();
          throw new VesperError(ErrorCode.SSH_DISCONNECTED, `${this.target}: closed`);
        }
        this.connections++;
        this.conn = c;
        c.onClose(() => {
          if (this.conn === c) this.conn = null;
        });
        return c;
      })
      .finally(() => (this.connecting = null));
    return this.connecting;
  }

  private drop(c: SshConnection): void {
    if (this.conn === c) this.conn = null;
    c.close();
  }

  /** Ends the connection (and with it every link on it). */
  close(): void {
    this.closed = true;
    if (this.conn) this.drop(this.conn);
  }
}
