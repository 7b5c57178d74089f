// One SSH connection, made the careful way: the host key checked against known_hosts or a
// pinned fingerprint before anything is sent, every wait bounded, and every failure turned
// into one of the stable VSP_SSH_* codes, so that `vesper agent install` and vesperd's SSH
// links say plainly what went wrong.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Client, type ClientChannel, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { fingerprint, keyTypeOf, KnownHosts, type HostKeyVerdict } from './known-hosts.js';
import { formatSshTarget, type SshTarget } from './target.js';

export interface SshOptions {
  target: SshTarget;
  /** private key file; without key or password, the usual ~/.ssh/id_* files and ssh-agent */
  keyFile?: string;
  passphrase?: string;
  password?: string;
  /** known_hosts to check against (default ~/.ssh/known_hosts) */
  knownHosts?: string;
  /** a pinned `SHA256:…` fingerprint: checked instead of known_hosts */
  fingerprint?: string;
  /**
   * The user accepts the key the host shows, even an unknown or changed one; it is then
   * recorded in known_hosts (not with a pinned fingerprint).
   */
  acceptHostKey?: boolean;
  /** TCP connect plus SSH handshake plus authentication (default 15 s) */
  connectTimeoutMs?: number;
  /** SSH-level keepalive; the link is dropped after keepaliveCountMax unanswered (default 5 s × 3) */
  keepaliveMs?: number;
  keepaliveCountMax?: number;
}

export interface HostKeyInfo {
  type: string;
  fingerprint: string;
  /** how it was trusted */
  trust: 'known_hosts' | 'pinned' | 'accepted';
}

export interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

const DEFAULT_KEYS = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

export function defaultKnownHosts(): string {
  return join(homedir(), '.ssh', 'known_hosts');
}

function readKey(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new VesperError(ErrorCode.KEY_MISSING, `cannot read the SSH key ${path}: ${(err as Error).message}`);
  }
}

export class SshConnection {
  private closed = false;
  private readonly closeWaiters: (() => void)[] = [];

  private constructor(
    readonly client: Client,
    readonly target: SshTarget,
    readonly hostKey: HostKeyInfo,
  ) {
    client.once('close', () => {
      this.closed = true;
      for (const w of this.closeWaiters.splice(0)) w();
    });
  }

  get name(): string {
    return formatSshTarget(this.target);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.closeWaiters.push(fn);
  }

  static connect(o: SshOptions): Promise<SshConnection> {
    const t = o.target;
    const where = formatSshTarget(t);
    const known = new KnownHosts(o.knownHosts ?? defaultKnownHosts());
    let verdict: HostKeyVerdict | { status: 'pin-mismatch'; got: string } | null = null;
    let info: HostKeyInfo | null = null;

    const cfg: ConnectConfig = {
      host: t.host,
      port: t.port,
      username: t.user,
      readyTimeout: o.connectTimeoutMs ?? 15_000,
      keepaliveInterval: o.keepaliveMs ?? 5000,
      keepaliveCountMax: o.keepaliveCountMax ?? 3,
      hostVerifier: (key: Buffer) => {
        const fp = fingerprint(key);
        const type = keyTypeOf(key);
        if (o.fingerprint) {
          if (fp === o.fingerprint.replace(/=+$/, '')) {
            info = { type, fingerprint: fp, trust: 'pinned' };
            return true;
          }
          verdict = { status: 'pin-mismatch', got: fp };
          if (!o.acceptHostKey) return false;
        }
        const v = known.check(t.host, t.port, key);
        verdict = v;
        if (v.status === 'known') {
          info = { type, fingerprint: fp, trust: 'known_hosts' };
          return true;
        }
        if (v.status === 'revoked' || !o.acceptHostKey) return false;
        known.accept(t.host, t.port, key);
        info = { type, fingerprint: fp, trust: 'accepted' };
        return true;
      },
    };
    // Prefer the key types already on file for this host, so a host with an ed25519 and an
    // RSA key is not called unknown because the handshake happened to pick the other.
    if (!o.fingerprint) {
      const types = known.typesFor(t.host, t.port);
      if (types.length) cfg.algorithms = { serverHostKey: { prepend: types as never } as never };
    }
    if (o.keyFile) {
      cfg.privateKey = readKey(o.keyFile);
      if (o.passphrase) cfg.passphrase = o.passphrase;
    }
    if (o.password !== undefined) cfg.password = o.password;
    if (!o.keyFile && o.password === undefined) {
      if (process.env.SSH_AUTH_SOCK) cfg.agent = process.env.SSH_AUTH_SOCK;
      for (const k of DEFAULT_KEYS) {
        try {
          cfg.privateKey = readFileSync(join(homedir(), '.ssh', k));
          break;
        } catch {
          /* try the next */
        }
      }
    }

    return new Promise((resolve, reject) => {
      const c = new Client();
      let settled = false;
      const fail = (e: VesperError): void => {
        if (settled) return;
        settled = true;
        c.end();
        reject(e);
      };
      c.once('ready', () => {
        if (settled) return;
        settled = true;
        resolve(new SshConnection(c, t, info!));
      });
      c.on('error', (err: Error & { level?: string }) => {
        if (settled) return;
        const v = verdict;
        if (v && v.status !== 'known' && !info) return fail(hostKeyError(where, o, v));
        switch (err.level) {
          case 'client-authentication':
            return fail(new VesperError(ErrorCode.SSH_AUTH, `${where} refused our credentials (${describeCreds(o)}): ${err.message}`));
          case 'client-timeout':
            return fail(
              new VesperError(
                ErrorCode.SSH_TIMEOUT,
                `${where} did not complete the SSH handshake within ${cfg.readyTimeout} ms: ${err.message}`,
              ),
            );
          default:
            return fail(new VesperError(ErrorCode.SSH_CONNECT, `cannot reach ${where}: ${err.message}`));
        }
      });
      c.once('close', () => fail(new VesperError(ErrorCode.SSH_CONNECT, `${where} closed the connection during the handshake`)));
      try {
        c.connect(cfg);
      } catch (err) {
        fail(new VesperError(ErrorCode.SSH_AUTH, `cannot use the credentials for ${where}: ${(err as Error).message}`));
      }
    });
  }

  /** Opens an exec channel; stdout is the stream, stderr its `.stderr`. */
  exec(command: string, timeoutMs = 15_000): Promise<ClientChannel> {
    return this.bounded(`exec ${command}`, timeoutMs, (done) => this.client.exec(command, done));
  }

  /** Runs a command to its end, with its output collected (bounded in time and size). */
  async run(command: string, o: { stdin?: string | Buffer; timeoutMs?: number; maxBytes?: number } = {}): Promise<RunResult> {
    const timeoutMs = o.timeoutMs ?? 30_000;
    const ch = await this.exec(command, timeoutMs);
    const max = o.maxBytes ?? 1 << 20;
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      let code: number | null = null;
      let signal: string | null = null;
      const t = setTimeout(() => {
        ch.close();
        reject(new VesperError(ErrorCode.SSH_TIMEOUT, `${this.name}: \`${command}\` did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
      ch.on('data', (d: Buffer) => {
        if (out.length < max) out += d.toString();
      });
      ch.stderr.on('data', (d: Buffer) => {
        if (err.length < max) err += d.toString();
      });
      ch.on('exit', (c: number | null, s?: string) => {
        code = c;
        signal = s ?? null;
      });
      ch.once('close', () => {
        clearTimeout(t);
        if (this.closed && code === null && signal === null)
          return reject(new VesperError(ErrorCode.SSH_DISCONNECTED, `${this.name}: connection lost while running \`${command}\``));
        resolve({ code, signal, stdout: out, stderr: err });
      });
      ch.end(o.stdin ?? undefined);
    });
  }

  /** Runs a command that must succeed; its stderr is the error otherwise. */
  async check(command: string, o: { stdin?: string | Buffer; timeoutMs?: number } = {}): Promise<string> {
    const r = await this.run(command, o);
    if (r.code !== 0)
      throw new VesperError(
        ErrorCode.SSH_REMOTE_FAILED,
        `${this.name}: \`${command}\` failed (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`}): ${r.stderr.trim() || r.stdout.trim()}`,
      );
    return r.stdout;
  }

  sftp(timeoutMs = 15_000): Promise<SFTPWrapper> {
    return this.bounded('sftp', timeoutMs, (done) => this.client.sftp(done));
  }

  close(): void {
    this.client.end();
  }

  private bounded<T>(what: string, timeoutMs: number, start: (done: (err: Error | undefined, v: T) => void) => void): Promise<T> {
    if (this.closed) return Promise.reject(new VesperError(ErrorCode.SSH_DISCONNECTED, `${this.name}: the connection is closed`));
    return new Promise((resolve, reject) => {
      let settled = false;
      const onClose = (): void =>
        finish(new VesperError(ErrorCode.SSH_DISCONNECTED, `${this.name}: connection lost before ${what} opened`));
      const t = setTimeout(
        () => finish(new VesperError(ErrorCode.SSH_TIMEOUT, `${this.name}: ${what} did not open within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const finish = (err: Error | null, v?: T): void => {
        if (settled) return;
        settled = true;
        clearTimeout(t);
        this.client.off('close', onClose);
        if (err)
          reject(err instanceof VesperError ? err : new VesperError(ErrorCode.SSH_REMOTE_FAILED, `${this.name}: ${what}: ${err.message}`));
        else resolve(v as T);
      };
      this.client.once('close', onClose);
      try {
        start((err, v) => finish(err ?? null, v));
      } catch (err) {
        finish(err as Error);
      }
    });
  }
}

function describeCreds(o: SshOptions): string {
  if (o.keyFile) return `key ${o.keyFile}`;
  if (o.password !== undefined) return 'password';
  return 'ssh-agent and ~/.ssh keys';
}

function hostKeyError(where: string, o: SshOptions, v: HostKeyVerdict | { status: 'pin-mismatch'; got: string }): VesperError {
  const file = o.knownHosts ?? defaultKnownHosts();
  switch (v.status) {
    case 'pin-mismatch':
      return new VesperError(
        ErrorCode.SSH_HOSTKEY_CHANGED,
        `${where} shows host key ${v.got}, not the pinned ${o.fingerprint}; refusing (pass --accept-host-key only if you know why it changed)`,
      );
    case 'changed':
      return new VesperError(
        ErrorCode.SSH_HOSTKEY_CHANGED,
        `${where}'s host key changed: ${file} line ${v.line} has ${v.knownFingerprint}; refusing (someone may be in the middle; pass --accept-host-key only if you know why it changed)`,
      );
    case 'revoked':
      return new VesperError(ErrorCode.SSH_HOSTKEY_CHANGED, `${where}'s host key is marked @revoked in ${file} line ${v.line}; refusing`);
    default:
      return new VesperError(
        ErrorCode.SSH_HOSTKEY_UNKNOWN,
        `${where}'s host key is not in ${file}; refusing (check its fingerprint, then pass --accept-host-key or --fingerprint SHA256:…)`,
      );
  }
}
