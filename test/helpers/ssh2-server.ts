// An SSH server inside the test process (ssh2's Server on a loopback port 0, as ssh2's own
// tests do): a generated host key, password and/or public-key authentication, `exec` that
// really runs the command with sh on this machine, and an SFTP subsystem over the real file
// system that can drop the whole connection after a given number of written bytes (an upload
// cut off in the middle). Used where OpenSSH cannot be made to misbehave on cue.
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, fstatSync, openSync, renameSync, statSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import ssh2 from 'ssh2';
import type { Connection, ParsedKey, SFTPWrapper } from 'ssh2';

const { Server, utils } = ssh2;
const { OPEN_MODE, STATUS_CODE } = utils.sftp;

export interface KeyPair {
  private: string;
  public: string;
  /** the public key blob in SSH wire format (what known_hosts holds, base64) */
  blob: Buffer;
}

export function generateKey(): KeyPair {
  // ssh2's generator now and then writes an ed25519 key that its own parser calls malformed
  // (a public key whose first byte is 0, one byte short): draw again, a bounded number of times.
  for (let i = 0; i < 50; i++) {
    const k = utils.generateKeyPairSync('ed25519');
    const pub = utils.parseKey(k.public);
    if (pub instanceof Error || utils.parseKey(k.private) instanceof Error) continue;
    return { private: k.private, public: k.public, blob: pub.getPublicSSH() };
  }
  throw new Error('ssh2 generated no usable ed25519 key in 50 tries');
}

export interface TestServerOptions {
  hostKey?: KeyPair;
  password?: string;
  /** the public key allowed to log in */
  clientKey?: KeyPair;
  /** end the connection once SFTP WRITEs have carried this many bytes */
  dropAfterBytes?: number;
  /** flip the bits of the byte at this offset of everything written (a disk that lies) */
  corruptByte?: number;
}

function attrsOf(s: Stats) {
  return { mode: s.mode, uid: s.uid, gid: s.gid, size: s.size, atime: Math.floor(s.atimeMs / 1000), mtime: Math.floor(s.mtimeMs / 1000) };
}

export class TestSshServer {
  /** bytes the SFTP subsystem wrote, over all connections */
  bytesWritten = 0;
  dropped = false;
  readonly hostKey: KeyPair;
  private readonly server: InstanceType<typeof Server>;
  private readonly conns = new Set<Connection>();
  port = 0;

  private constructor(readonly o: TestServerOptions) {
    this.hostKey = o.hostKey ?? generateKey();
    this.server = new Server({ hostKeys: [this.hostKey.private] }, (client) => this.onClient(client));
  }

  static async start(o: TestServerOptions = {}): Promise<TestSshServer> {
    const s = new TestSshServer(o);
    await new Promise<void>((r) => s.server.listen(0, '127.0.0.1', () => r()));
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  /** A known_hosts line for this server under `[127.0.0.1]:port`, with the given key. */
  knownHostsLine(key: KeyPair = this.hostKey): string {
    return `[127.0.0.1]:${this.port} ssh-ed25519 ${key.blob.toString('base64')}\n`;
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.end();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private onClient(client: Connection): void {
    this.conns.add(client);
    client.on('close', () => this.conns.delete(client));
    client.on('error', () => {
      /* a client that went away */
    });
    client.on('authentication', (ctx) => {
      if (ctx.method === 'password' && this.o.password !== undefined && ctx.password === this.o.password) return ctx.accept();
      if (ctx.method === 'publickey' && this.o.clientKey) {
        const allowed = utils.parseKey(this.o.clientKey.public) as ParsedKey;
        if (ctx.key.algo === allowed.type && ctx.key.data.equals(allowed.getPublicSSH())) {
          if (!ctx.signature) return ctx.accept(); // the client asks whether the key would do
          if (allowed.verify(ctx.blob!, ctx.signature, ctx.hashAlgo) === true) return ctx.accept();
        }
      }
      ctx.reject(['password', 'publickey']);
    });
    client.on('ready', () => {
      client.on('session', (accept) => {
        const session = accept();
        session.on('exec', (acceptExec, _reject, info) => {
          const ch = acceptExec();
          const p = spawn('sh', ['-c', info.command], { stdio: ['pipe', 'pipe', 'pipe'] });
          p.stdout.on('data', (d: Buffer) => ch.write(d));
          p.stderr.on('data', (d: Buffer) => ch.stderr.write(d));
          ch.on('data', (d: Buffer) => p.stdin.write(d));
          ch.on('end', () => p.stdin.end());
          p.stdin.on('error', () => {});
          ch.on('close', () => p.exitCode === null && p.kill('SIGKILL'));
          p.on('close', (code, signal) => {
            if (signal) ch.exit(signal.replace(/^SIG/, ''), false, '');
            else ch.exit(code ?? 1);
            ch.end();
          });
        });
        session.on('sftp', (acceptSftp) => this.sftp(client, acceptSftp()));
      });
    });
  }

  private sftp(client: Connection, sftp: SFTPWrapper): void {
    const fds = new Map<number, number>();
    let next = 1;
    const handleOf = (h: Buffer): number | undefined => (h.length === 4 ? fds.get(h.readUInt32BE(0)) : undefined);
    const fail = (reqid: number, err: unknown): void =>
      void sftp.status(
        reqid,
        (err as NodeJS.ErrnoException).code === 'ENOENT' ? STATUS_CODE.NO_SUCH_FILE : STATUS_CODE.FAILURE,
        String((err as Error).message),
      );
    sftp
      .on('OPEN', (reqid, filename, flags, attrs) => {
        try {
          const mode = flags & OPEN_MODE.WRITE ? (flags & OPEN_MODE.APPEND ? 'a' : 'w') : 'r';
          const fd = openSync(filename, mode, attrs.mode ?? 0o644);
          const h = Buffer.alloc(4);
          h.writeUInt32BE(next);
          fds.set(next++, fd);
          sftp.handle(reqid, h);
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('WRITE', (reqid, handle, offset, data) => {
        const fd = handleOf(handle);
        if (fd === undefined) return void sftp.status(reqid, STATUS_CODE.FAILURE);
        const at = this.o.corruptByte !== undefined ? this.o.corruptByte - this.bytesWritten : -1;
        if (at >= 0 && at < data.length) data[at] = data[at]! ^ 0xff;
        writeSync(fd, data, 0, data.length, offset);
        this.bytesWritten += data.length;
        if (this.o.dropAfterBytes !== undefined && this.bytesWritten >= this.o.dropAfterBytes) {
          // The link goes, mid-upload: no answer to this write, the TCP connection cut (ssh2's
          // Connection keeps its socket as _sock; end() would wait for the client to agree).
          this.dropped = true;
          (client as unknown as { _sock: Socket })._sock.destroy();
          return;
        }
        sftp.status(reqid, STATUS_CODE.OK);
      })
      .on('CLOSE', (reqid, handle) => {
        const n = handle.length === 4 ? handle.readUInt32BE(0) : -1;
        const fd = fds.get(n);
        if (fd === undefined) return void sftp.status(reqid, STATUS_CODE.FAILURE);
        closeSync(fd);
        fds.delete(n);
        sftp.status(reqid, STATUS_CODE.OK);
      })
      .on('FSTAT', (reqid, handle) => {
        const fd = handleOf(handle);
        if (fd === undefined) return void sftp.status(reqid, STATUS_CODE.FAILURE);
        sftp.attrs(reqid, attrsOf(fstatSync(fd)));
      })
      .on('STAT', (reqid, path) => {
        try {
          sftp.attrs(reqid, attrsOf(statSync(path)));
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('LSTAT', (reqid, path) => {
        try {
          sftp.attrs(reqid, attrsOf(statSync(path)));
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('SETSTAT', (reqid, path, attrs) => {
        try {
          if (attrs.mode !== undefined) chmodSync(path, attrs.mode);
          sftp.status(reqid, STATUS_CODE.OK);
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('FSETSTAT', (reqid, _handle) => sftp.status(reqid, STATUS_CODE.OK))
      .on('RENAME', (reqid, from, to) => {
        // SFTP v3 semantics, as OpenSSH's server: an existing target is an error.
        if (existsSync(to)) return void sftp.status(reqid, STATUS_CODE.FAILURE, 'target exists');
        try {
          renameSync(from, to);
          sftp.status(reqid, STATUS_CODE.OK);
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('REMOVE', (reqid, path) => {
        try {
          unlinkSync(path);
          sftp.status(reqid, STATUS_CODE.OK);
        } catch (err) {
          fail(reqid, err);
        }
      })
      .on('REALPATH', (reqid, path) => void sftp.name(reqid, [{ filename: resolvePath('/', path), longname: '', attrs: {} as never }]));
  }
}
