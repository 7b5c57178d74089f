// vesperd's SSH link to a configured target (host/daemon/ssh-link.ts, host/ssh/ssh-dialer.ts)
// against an in-process ssh2 server: the password comes from the environment variable the
// config names and nowhere else, a wrong or missing one is VSP_SSH_AUTH, and one SSH
// connection carries every link attempt while it lives.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshTargetConfig } from '../../host/config/schema.js';
import { sshLink } from '../../host/daemon/ssh-link.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { TestSshServer } from '../helpers/ssh2-server.js';

const DEFAULTS = { connectTimeout: 5000, keepalive: 5000, keepaliveCountMax: 3 };
const PASSWORD = 'correct horse battery staple';

let server: TestSshServer;
let dir: string;
let knownHosts: string;
const connections = (): number => (server as unknown as { conns: Set<unknown> }).conns.size;

beforeAll(async () => {
  server = await TestSshServer.start({ password: PASSWORD });
  dir = mkdtempSync(join(tmpdir(), 'vesper-ssh-link-'));
  knownHosts = join(dir, 'known_hosts');
  writeFileSync(knownHosts, server.knownHostsLine());
});
afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function target(o: Partial<SshTargetConfig> = {}): SshTargetConfig {
  return {
    target: `vesper@127.0.0.1:${server.port}`,
    knownHosts,
    passwordEnv: 'VESPER_TEST_PW',
    prefix: join(dir, 'no-agent-here'),
    runDir: join(dir, 'run'),
    ...o,
  };
}

async function failure(p: Promise<unknown>): Promise<VesperError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(VesperError);
    return err as VesperError;
  }
  throw new Error('expected the link attempt to fail');
}

describe('sshLink', () => {
  it('says which variable is missing, and does not connect', async () => {
    const l = sshLink(target(), DEFAULTS, {});
    const e = await failure(l.open({}));
    expect(e.code).toBe(ErrorCode.SSH_AUTH);
    expect(e.message).toContain('$VESPER_TEST_PW');
    expect(e.message).toContain("not set in vesperd's environment");
    expect(l.transport).toBe('ssh');
    expect(l.where).toBe(`vesper@127.0.0.1:${server.port}`);
    l.close?.();
  });

  it('a wrong password from the variable is VSP_SSH_AUTH', async () => {
    const l = sshLink(target(), DEFAULTS, { VESPER_TEST_PW: 'wrong' });
    try {
      expect((await failure(l.open({}))).code).toBe(ErrorCode.SSH_AUTH);
    } finally {
      l.close?.();
    }
  });

  it('the right one logs in: the link then fails only for want of an agent, on one connection kept for every attempt', async () => {
    const l = sshLink(target(), DEFAULTS, { VESPER_TEST_PW: PASSWORD });
    try {
      for (let i = 0; i < 3; i++) {
        const e = await failure(l.open({ handshakeTimeoutMs: 5000 }));
        expect(e.code).toBe(ErrorCode.AGENT_NOT_INSTALLED);
        expect(e.message).toContain(`${join(dir, 'no-agent-here')}/bin/vesper-agent-relay`);
      }
      expect(connections()).toBe(1);
      expect(l.hostKey?.()).toMatch(/^SHA256:\S+ \(ssh-ed25519, known_hosts\)$/);
    } finally {
      l.close?.();
    }
    await new Promise((r) => setTimeout(r, 200));
    expect(connections()).toBe(0);
    expect(l.hostKey?.()).toBe('');
  });
});
