// A VM of the config's ssh.targets as a GuestLink reaches it: one SshDialer (one SSH
// connection, kept and made again when it drops) whose exec channels carry the agent protocol.
import type { SshConfig, SshTargetConfig } from '../config/schema.js';
import { DEFAULT_AGENT_LAYOUT } from '../ssh/agent-link.js';
import { SshDialer } from '../ssh/ssh-dialer.js';
import { formatSshTarget, parseSshTarget } from '../ssh/target.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { LinkSpec } from './guest-link.js';

export function sshLink(t: SshTargetConfig, defaults: Omit<SshConfig, 'targets'>, env: NodeJS.ProcessEnv = process.env): LinkSpec {
  const target = parseSshTarget(t.target);
  const password = t.passwordEnv !== undefined ? env[t.passwordEnv] : undefined;
  const dialer = new SshDialer({
    ssh: {
      target,
      ...(t.key !== undefined ? { keyFile: t.key } : {}),
      ...(t.knownHosts !== undefined ? { knownHosts: t.knownHosts } : {}),
      ...(t.fingerprint !== undefined ? { fingerprint: t.fingerprint } : {}),
      ...(password !== undefined ? { password } : {}),
      connectTimeoutMs: defaults.connectTimeout,
      keepaliveMs: defaults.keepalive,
      keepaliveCountMax: defaults.keepaliveCountMax,
    },
    layout: { ...DEFAULT_AGENT_LAYOUT, prefix: t.prefix, runDir: t.runDir },
  });
  const where = formatSshTarget(target);
  return {
    transport: 'ssh',
    where,
    open:
      t.passwordEnv !== undefined && password === undefined
        ? () =>
            Promise.reject(
              new VesperError(
                ErrorCode.SSH_AUTH,
                `${where}: the password is to come from $${t.passwordEnv}, which is not set in vesperd's environment`,
              ),
            )
        : dialer.open,
    close: () => dialer.close(),
    hostKey: () => {
      const k = dialer.hostKey;
      return k ? `${k.fingerprint} (${k.type}, ${k.trust === 'pinned' ? 'pinned' : 'known_hosts'})` : '';
    },
  };
}
