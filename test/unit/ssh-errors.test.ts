// Every way an SSH connection or an install can fail, each against a real server in this
// process (ssh2's Server on a loopback port, test/helpers/ssh2-server.ts) or a real socket
// that never speaks: the stable code, the exit status it maps to, and a message that says
// what to do.
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCode, VesperError, exitStatusFor } from '../../proto/errors.js';
import { SshConnection, type SshOptions } from '../../host/ssh/connect.js';
import { defaultBundlePath, installAgent } from '../../host/ssh/install.js';
import { uninstallAgent } from '../../host/ssh/uninstall.js';
import { fingerprint, KnownHosts } from '../../host/ssh/known-hosts.js';
import { TestSshServer, generateKey, type KeyPair } from '../helpers/ssh2-server.js';
import { VESPER } from '../helpers/vesperd-process.js';

/** an ed25519 public key, as the host's signing key is pushed */
const HOST_PUB = generateKeyPairSync('ed25519').publicKey.export({ format: 'pem', type: 'spki' }).toString();
let dir: string;
let clientKey: KeyPair;
let clientKeyFile: string;
let otherKeyFile: string;
const servers: TestSshServer[] = [];
const conns: SshConnection[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-ssh-errors-'));
  clientKey = generateKey();
  clientKeyFile = join(dir, 'id_client');
  writeFileSync(clientKeyFile, clientKey.private, { mode: 0o600 });
  otherKeyFile = join(dir, 'id_other');
  writeFileSync(otherKeyFile, generateKey().private, { mode: 0o600 });
});

afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  for (const s of servers.splice(0)) await s.stop();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function server(o: Parameters<typeof TestSshServer.start>[0] = {}): Promise<TestSshServer> {
  const s = await TestSshServer.start({ clientKey, password: 'right horse battery', ...o });
  servers.push(s);
  return s;
}

let khN = 0;
/** A known_hosts file with these lines. */
function knownHosts(text: string): string {
  const p = join(dir, `known_hosts.${khN++}`);
  writeFileSync(p, text);
  return p;
}

async function connect(s: TestSshServer, o: Partial<SshOptions>): Promise<SshConnection> {
  const c = await SshConnection.connect({
    target: { user: 'root', host: '127.0.0.1', port: s.port },
    connectTimeoutMs: 5000,
    knownHosts: knownHosts(s.knownHostsLine()),
    keyFile: clientKeyFile,
    ...o,
  });
  conns.push(c);
  return c;
}

/** The VesperError a promise rejects with (failing the test when it resolves). */
async function failure(p: Promise<unknown>): Promise<VesperError> {
  try {
    const v = await p;
    if (v instanceof SshConnection) conns.push(v);
  } catch (err) {
    expect(err).toBeInstanceOf(VesperError);
    return err as VesperError;
  }
  throw new Error('expected a failure, it succeeded');
}

describe('SSH connections: credentials', () => {
  it('connects with the right key, and the host key is trusted through known_hosts', async () => {
    const s = await server();
    const c = await connect(s, {});
    expect(c.hostKey).toMatchObject({ trust: 'known_hosts', type: 'ssh-ed25519', fingerprint: fingerprint(s.hostKey.blob) });
    expect((await c.run('echo hello; exit 3')).code).toBe(3);
  });

  it('a wrong password: VSP_SSH_AUTH, exit 77, and the message says credentials were refused', async () => {
    const s = await server();
    const e = await failure(connect(s, { keyFile: undefined, password: 'wrong' }));
    expect(e.code).toBe(ErrorCode.SSH_AUTH);
    expect(exitStatusFor(e.code)).toBe(77);
    expect(e.message).toMatch(/refused our credentials \(password\)/);
    // and the right one works
    await connect(s, { keyFile: undefined, password: 'right horse battery' });
  });

  it('a key the server does not accept: VSP_SSH_AUTH naming the key file', async () => {
    const s = await server();
    const e = await failure(connect(s, { keyFile: otherKeyFile }));
    expect(e.code).toBe(ErrorCode.SSH_AUTH);
    expect(e.message).toContain(`key ${otherKeyFile}`);
  });

  it('a key file that is not there: VSP_KEY_MISSING before any connection', async () => {
    const s = await server();
    const e = await failure(connect(s, { keyFile: join(dir, 'no-such-key') }));
    expect(e.code).toBe(ErrorCode.KEY_MISSING);
  });
});

describe('SSH connections: host keys', () => {
  it('an unknown host key is refused unless accepted; accepting records it, hashed, and it is known next time', async () => {
    const s = await server();
    const kh = knownHosts('');
    const e = await failure(connect(s, { knownHosts: kh }));
    expect(e.code).toBe(ErrorCode.SSH_HOSTKEY_UNKNOWN);
    expect(exitStatusFor(e.code)).toBe(76);
    expect(e.message).toMatch(/not in .*refusing.*--accept-host-key or --fingerprint/);
    expect(readFileSync(kh, 'utf8')).toBe('');

    const c = await connect(s, { knownHosts: kh, acceptHostKey: true });
    expect(c.hostKey.trust).toBe('accepted');
    const text = readFileSync(kh, 'utf8');
    expect(text).toMatch(/^\|1\|[^ ]+ ssh-ed25519 /);
    expect(text).not.toContain('127.0.0.1');
    expect(new KnownHosts(kh).check('127.0.0.1', s.port, s.hostKey.blob).status).toBe('known');
    const again = await connect(s, { knownHosts: kh });
    expect(again.hostKey.trust).toBe('known_hosts');
  });

  it('a changed host key is refused (VSP_SSH_HOSTKEY_CHANGED, the line and the old fingerprint), accepted only when asked, replacing the old line', async () => {
    const s = await server();
    const old = generateKey();
    const kh = knownHosts(`# mine\nother.example ssh-ed25519 ${generateKey().blob.toString('base64')}\n${s.knownHostsLine(old)}`);
    const e = await failure(connect(s, { knownHosts: kh }));
    expect(e.code).toBe(ErrorCode.SSH_HOSTKEY_CHANGED);
    expect(e.message).toContain(`line 3 has ${fingerprint(old.blob)}`);
    expect(e.message).toMatch(/someone may be in the middle/);

    const c = await connect(s, { knownHosts: kh, acceptHostKey: true });
    expect(c.hostKey.trust).toBe('accepted');
    const lines = readFileSync(kh, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(3); // the comment, the other host, the new key; the old one gone
    expect(lines.join('\n')).not.toContain(old.blob.toString('base64'));
    expect(new KnownHosts(kh).check('127.0.0.1', s.port, s.hostKey.blob).status).toBe('known');
  });

  it('a pinned fingerprint that does not match is refused; the right one is trusted without known_hosts', async () => {
    const s = await server();
    const wrong = fingerprint(generateKey().blob);
    const e = await failure(connect(s, { knownHosts: knownHosts(''), fingerprint: wrong }));
    expect(e.code).toBe(ErrorCode.SSH_HOSTKEY_CHANGED);
    expect(e.message).toContain(`shows host key ${fingerprint(s.hostKey.blob)}, not the pinned ${wrong}`);
    const c = await connect(s, { knownHosts: knownHosts(''), fingerprint: fingerprint(s.hostKey.blob) });
    expect(c.hostKey.trust).toBe('pinned');
  });
});

describe('SSH connections: the network', () => {
  let silent: Server;
  const held: Socket[] = [];
  afterAll(async () => {
    for (const s of held) s.destroy();
    await new Promise<void>((r) => (silent ? silent.close(() => r()) : r()));
  });

  it('a peer that accepts TCP and never answers: VSP_SSH_TIMEOUT within the bound', async () => {
    silent = createServer((sock) => held.push(sock)); // accepts, says nothing, ever
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    const t0 = Date.now();
    const e = await failure(
      SshConnection.connect({ target: { user: 'root', host: '127.0.0.1', port }, connectTimeoutMs: 1000, keyFile: clientKeyFile }),
    );
    const took = Date.now() - t0;
    expect(e.code).toBe(ErrorCode.SSH_TIMEOUT);
    expect(exitStatusFor(e.code)).toBe(69);
    expect(e.message).toMatch(/did not complete the SSH handshake within 1000 ms/);
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(3000);
  });

  it('nobody listening: VSP_SSH_CONNECT', async () => {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    const port = (s.address() as { port: number }).port;
    await new Promise<void>((r) => s.close(() => r()));
    const e = await failure(
      SshConnection.connect({ target: { user: 'root', host: '127.0.0.1', port }, connectTimeoutMs: 2000, keyFile: clientKeyFile }),
    );
    expect(e.code).toBe(ErrorCode.SSH_CONNECT);
    expect(e.message).toMatch(/cannot reach root@127\.0\.0\.1:\d+: .*ECONNREFUSED/);
  });
});

describe('installAgent: arguments', () => {
  it('a host key that is not an ed25519 public key is refused before anything is pushed', async () => {
    const s = await server();
    const c = await connect(s, {});
    const prefix = join(dir, 'bad-key');
    const e = await failure(
      installAgent(c, { layout: { prefix, runDir: join(dir, 'bad-key-run'), unit: 'x.service' }, hostPublicPem: 'nope' }),
    );
    expect(e.code).toBe(ErrorCode.KEY_INVALID);
    expect(existsSync(prefix)).toBe(false);
  });
});

describe("installAgent: a prefix that is not vesper's", () => {
  it('is refused by install and by uninstall, and what is in it stays', async () => {
    const s = await server();
    const c = await connect(s, {});
    const prefix = join(dir, 'someone-elses');
    mkdirSync(prefix, { recursive: true });
    writeFileSync(join(prefix, 'precious'), 'keep me');
    const layout = { prefix, runDir: join(dir, 'someone-elses-run'), unit: 'vesper-agent-ssh.service' };
    const e = await failure(installAgent(c, { layout, hostPublicPem: HOST_PUB }));
    expect(e.code).toBe(ErrorCode.USAGE);
    expect(e.message).toMatch(/holds files that are not vesper's; refusing to install into it/);
    const u = await failure(uninstallAgent(c, { layout }));
    expect(u.code).toBe(ErrorCode.USAGE);
    expect(readFileSync(join(prefix, 'precious'), 'utf8')).toBe('keep me');
    expect(readdirSync(prefix)).toEqual(['precious']);
  });
});

describe('installAgent: a file that arrives damaged', () => {
  it('is caught by its sha256 on the target before any rename: VSP_SSH_REMOTE_FAILED, nothing installed, no temporary left', async () => {
    const s = await server({ corruptByte: 1000 });
    const c = await connect(s, {});
    const prefix = join(dir, 'damaged', 'opt');
    const e = await failure(
      installAgent(c, {
        layout: { prefix, runDir: join(dir, 'damaged', 'run'), unit: 'vesper-agent-ssh.service' },
        hostPublicPem: HOST_PUB,
      }),
    );
    expect(e.code).toBe(ErrorCode.SSH_REMOTE_FAILED);
    expect(e.message).toMatch(
      /\.vesper-agent\.mjs\.vesper-tmp\.\S+ arrived damaged \(sha256 [0-9a-f]{64}, sent [0-9a-f]{64}\); nothing was installed/,
    );
    expect(readdirSync(prefix).sort()).toEqual(['.vesper-agent-prefix', 'bin']);
    expect(readdirSync(join(prefix, 'bin'))).toEqual([]);
  });
});

describe('installAgent: the connection lost in the middle of the upload', () => {
  it('fails with VSP_SSH_DISCONNECTED and leaves nothing under a final name', async () => {
    const bundle = defaultBundlePath();
    if (!existsSync(bundle)) throw new Error(`${bundle} is missing: run npm run build`);
    const size = statSync(bundle).size;
    // Past ssh2's window of writes in flight (16 × 32 KiB), so that some were acknowledged.
    const s = await server({ dropAfterBytes: Math.floor(size * 0.85) });
    const c = await connect(s, {});
    const prefix = join(dir, 'target', 'opt', 'vesper-agent');
    const runDir = join(dir, 'target', 'run');
    const progress: number[] = [];
    const e = await failure(
      installAgent(c, {
        layout: { prefix, runDir, unit: 'vesper-agent-ssh.service' },
        hostPublicPem: HOST_PUB,
        onProgress: (p) => progress.push(p.bytes),
      }),
    );
    expect(s.dropped).toBe(true);
    expect(e.code).toBe(ErrorCode.SSH_DISCONNECTED);
    expect(exitStatusFor(e.code)).toBe(69);
    expect(e.message).toMatch(/connection lost while pushing .*vesper-agent\.mjs.*nothing was installed under its final name/);
    // The upload had begun and not finished.
    expect(progress.length).toBeGreaterThan(0);
    expect(Math.max(...progress)).toBeLessThan(size);

    // No final name exists: not the bundle, the key, the wrappers or the commit marker.
    for (const f of ['vesper-agent.mjs', 'host.pub', 'bin/vesper-agent', 'bin/vesper-agent-relay', 'install.json', 'node'])
      expect(existsSync(join(prefix, f)), f).toBe(false);
    // What did arrive sits under a temporary name, short of the whole file.
    const tmps = readdirSync(prefix).filter((f) => f.includes('.vesper-tmp.'));
    expect(tmps.length).toBe(1);
    expect(tmps[0]).toMatch(/^\.vesper-agent\.mjs\.vesper-tmp\./);
    expect(statSync(join(prefix, tmps[0]!)).size).toBeLessThan(size);
  });
});

// Each case starts the built CLI two or three times; on a loaded 2-core machine one start takes
// several seconds, so these get more than the unit project's 20 s.
describe('vesper agent (the built CLI): stable codes and exit statuses', { timeout: 90_000 }, () => {
  const cli = (args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const e: NodeJS.ProcessEnv = { ...process.env, VESPER_KEY_DIR: join(dir, 'cli-keys'), ...env };
      delete e.VESPER_SSH_PASSWORD;
      Object.assign(e, env);
      execFile(process.execPath, [VESPER, 'agent', ...args], { timeout: 30_000, cwd: '/', env: e }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      });
    });
  beforeAll(() => {
    if (!existsSync(VESPER)) throw new Error(`${VESPER} is missing: run npm run build`);
  });

  it('a password from VESPER_SSH_PASSWORD only; a wrong one exits 77 with VSP_SSH_AUTH', async () => {
    const s = await server();
    const kh = knownHosts(s.knownHostsLine());
    const prefix = join(dir, 'cli-target', 'opt');
    const args = [
      'status',
      '--ssh',
      `root@127.0.0.1:${s.port}`,
      '--known-hosts',
      kh,
      '--prefix',
      prefix,
      '--run-dir',
      join(dir, 'cli-target', 'run'),
    ];
    const wrong = await cli(args, { VESPER_SSH_PASSWORD: 'wrong' });
    expect(wrong.code).toBe(77);
    expect(wrong.stderr).toMatch(/^vesper: VSP_SSH_AUTH: .*refused our credentials \(password\)/m);
    // the right password gets in; nothing is installed there: exit 3, VSP_AGENT_NOT_INSTALLED
    const right = await cli(args, { VESPER_SSH_PASSWORD: 'right horse battery' });
    expect(right.code).toBe(3);
    expect(right.stdout).toMatch(/the agent is not installed/);
    expect(right.stderr).toMatch(/VSP_AGENT_NOT_INSTALLED/);
    // and uninstall of nothing is not an error
    const un = await cli(['uninstall', ...args.slice(1)], { VESPER_SSH_PASSWORD: 'right horse battery' });
    expect(un.code).toBe(0);
    expect(un.stdout).toMatch(/nothing to uninstall/);
  });

  it('an unknown host key exits 76 (VSP_SSH_HOSTKEY_UNKNOWN); --accept-host-key records it', async () => {
    const s = await server();
    const kh = knownHosts('');
    const args = [
      'status',
      '--ssh',
      `root@127.0.0.1:${s.port}`,
      '--key',
      clientKeyFile,
      '--known-hosts',
      kh,
      '--prefix',
      join(dir, 'cli-t2'),
    ];
    const r = await cli(args);
    expect(r.code).toBe(76);
    expect(r.stderr).toMatch(/^vesper: VSP_SSH_HOSTKEY_UNKNOWN: .*--accept-host-key/m);
    const ok = await cli([...args, '--accept-host-key']);
    expect(ok.code).toBe(3); // in, and nothing installed
    expect(ok.stderr).toMatch(/accepted root@127\.0\.0\.1:\d+'s host key SHA256:/);
    expect(new KnownHosts(kh).check('127.0.0.1', s.port, s.hostKey.blob).status).toBe('known');
  });

  it('install creates no key before the connection succeeds: an unknown host key (76), refused credentials (77), nothing listening (69)', async () => {
    const s = await server();
    const keys = join(dir, 'install-keys'); // vesperd's key directory, with no key yet
    const base = [
      'install',
      '--ssh',
      `root@127.0.0.1:${s.port}`,
      '--prefix',
      join(dir, 'cli-t4', 'opt'),
      '--run-dir',
      join(dir, 'cli-t4', 'run'),
    ];
    const unknown = await cli([...base, '--key', clientKeyFile, '--known-hosts', knownHosts('')], { VESPER_KEY_DIR: keys });
    expect(unknown.code, unknown.stderr).toBe(76);
    expect(unknown.stderr).toMatch(/VSP_SSH_HOSTKEY_UNKNOWN/);
    const refused = await cli([...base, '--known-hosts', knownHosts(s.knownHostsLine())], {
      VESPER_KEY_DIR: keys,
      VESPER_SSH_PASSWORD: 'wrong',
    });
    expect(refused.code, refused.stderr).toBe(77);
    const nobodyThere = await cli(['install', '--ssh', 'root@127.0.0.1:1', '--key', clientKeyFile, '--known-hosts', knownHosts('')], {
      VESPER_KEY_DIR: keys,
    });
    expect(nobodyThere.code, nobodyThere.stderr).toBe(69);
    expect(nobodyThere.stderr).toMatch(/VSP_SSH_CONNECT/);
    expect(existsSync(keys)).toBe(false);
  }, 60_000);

  it('a VM name is looked up in the config ssh.targets (its password from the variable it names); unknown VMs and bad usage have their codes', async () => {
    const s = await server({ password: 'from the config env' });
    const cfg = join(dir, 'vesper.yaml');
    writeFileSync(
      cfg,
      [
        'ssh:',
        '  targets:',
        '    web1:',
        `      target: root@127.0.0.1:${s.port}`,
        `      known_hosts: ${knownHosts(s.knownHostsLine())}`,
        '      password_env: WEB1_PASSWORD',
        `      prefix: ${join(dir, 'cli-t3', 'opt')}`,
        `      run_dir: ${join(dir, 'cli-t3', 'run')}`,
        '',
      ].join('\n'),
    );
    const r = await cli(['status', 'web1', '-c', cfg, '-o', 'json'], { WEB1_PASSWORD: 'from the config env' });
    expect(r.code).toBe(3);
    expect(JSON.parse(r.stdout)).toMatchObject({ installed: false, prefix: join(dir, 'cli-t3', 'opt') });

    const nope = await cli(['status', 'web9', '-c', cfg]);
    expect(nope.code).toBe(3);
    expect(nope.stderr).toMatch(/VSP_VM_NOT_FOUND: no SSH target for VM "web9"/);
    const both = await cli(['status', 'web1', '--ssh', 'root@127.0.0.1', '-c', cfg]);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/VSP_USAGE/);
    const badPrefix = await cli(['install', '--ssh', `root@127.0.0.1:${s.port}`, '--prefix', 'relative/dir']);
    expect(badPrefix.code).toBe(2);
    expect(badPrefix.stderr).toMatch(/VSP_USAGE: the agent's prefix must be an absolute path/);
  });
});
