// An SSH target as the user names it: `user@host[:port]`, `[v6addr]:port`, or a config
// entry. Parsing lives here so the CLI, the config and vesperd read targets the same way.
import { ErrorCode, VesperError } from '../../proto/errors.js';

export interface SshTarget {
  user: string;
  host: string;
  port: number;
}

export function parseSshTarget(spec: string, defaultUser = 'root'): SshTarget {
  const m = /^(?:([^@\s]+)@)?(\[[0-9a-fA-F:.]+\]|[^:@\s[\]]+)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new VesperError(ErrorCode.USAGE, `not an SSH target: ${JSON.stringify(spec)} (use user@host[:port])`);
  const port = m[3] === undefined ? 22 : Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new VesperError(ErrorCode.USAGE, `port out of range in ${JSON.stringify(spec)}`);
  const host = m[2]!.startsWith('[') ? m[2]!.slice(1, -1) : m[2]!;
  return { user: m[1] ?? defaultUser, host, port };
}

export function formatSshTarget(t: SshTarget): string {
  const host = t.host.includes(':') ? `[${t.host}]` : t.host;
  return `${t.user}@${host}${t.port === 22 ? '' : `:${t.port}`}`;
}

/** The name OpenSSH files a host under in known_hosts: `host`, or `[host]:port` off port 22. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}
