// A real OpenSSH sshd for tests and benchmarks: its own config, throwaway host and client
// keys, a loopback port, and a known_hosts file that trusts exactly this server. Whatever it
// started (the listener and every session process under it) is killed by stop(), even when
// the test failed. Root only: sshd must switch users and read its keys.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SshTarget } from '../../host/ssh/target.js';

const SETUP = join(import.meta.dirname, '..', '..', 'scripts', 'sshd-setup.sh');

/** Why a real sshd cannot run here, or '' when it can (installing it when missing). */
export function whyNoSshd(): string {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (sshd switches users and reads its host keys)';
  const r = spawnSync('bash', [SETUP], { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0)
    return `OpenSSH's server could not be installed (scripts/sshd-setup.sh exit ${r.status}): ${r.stderr.trim().split('\n').pop()}`;
  return '';
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

function keygen(path: string): string {
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vesper-test', '-f', path], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  return readFileSync(`${path}.pub`, 'utf8').trim();
}

/** Every process whose parent chain reaches pid (not pid itself). */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  for (const p of parent.keys()) {
    let q = parent.get(p);
    for (let hops = 0; q !== undefined && q > 1 && hops < 64; hops++) {
      if (q === pid) {
        out.push(p);
        break;
      }
      q = parent.get(q);
    }
  }
  return out;
}

export class Sshd {
  private proc: ChildProcess | null = null;
  private log = '';

  private constructor(
    readonly dir: string,
    readonly port: number,
    /** the client's private key (ed25519, no passphrase), authorised for every user */
    readonly clientKey: string,
    /** a known_hosts file holding this server's host key */
    readonly knownHosts: string,
    /** the server's host key fingerprint, SHA256:… */
    readonly fingerprint: string,
  ) {}

  target(user = 'root'): SshTarget {
    return { user, host: '127.0.0.1', port: this.port };
  }

  get stderr(): string {
    return this.log;
  }

  static async start(o: { extraConfig?: string[] } = {}): Promise<Sshd> {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-sshd-'));
    const port = await freePort();
    const hostPub = keygen(join(dir, 'host_ed25519'));
    const clientPub = keygen(join(dir, 'client_ed25519'));
    writeFileSync(join(dir, 'authorized_keys'), clientPub + '\n', { mode: 0o600 });
    writeFileSync(join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${hostPub.split(' ').slice(0, 2).join(' ')}\n`);
    const fp = spawnSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', join(dir, 'host_ed25519.pub')], { encoding: 'utf8' }).stdout.split(
      ' ',
    )[1]!;
    const config = [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_ed25519')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      // the keys live in a temporary directory whose parents are world-writable (/tmp)
      'StrictModes no',
      'Subsystem sftp /usr/lib/openssh/sftp-server',
      'LogLevel VERBOSE',
      ...(o.extraConfig ?? []),
    ];
    writeFileSync(join(dir, 'sshd_config'), config.join('\n') + '\n');
    const s = new Sshd(dir, port, join(dir, 'client_ed25519'), join(dir, 'known_hosts'), fp);
    const p = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
    s.proc = p;
    p.stderr.on('data', (c: Buffer) => (s.log = (s.log + c.toString()).slice(-65536)));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (p.exitCode !== null) {
        s.cleanup();
        throw new Error(`sshd exited with ${p.exitCode}: ${s.log}`);
      }
      if (await accepts(port)) return s;
      if (Date.now() > deadline) {
        await s.stop();
        throw new Error(`sshd did not listen on 127.0.0.1:${port} within 10 s: ${s.log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Kills the sessions under it, then the listener, and removes its directory. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p?.pid && p.exitCode === null && p.signalCode === null) {
      for (const d of descendants(p.pid))
        try {
          process.kill(d, 'SIGKILL');
        } catch {
          /* gone */
        }
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    this.cleanup();
  }

  private cleanup(): void {
    if (existsSync(this.dir)) rmSync(this.dir, { recursive: true, force: true });
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}
