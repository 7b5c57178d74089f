// Pushing files to a target as one transaction: every file goes over SFTP to a temporary name
// in its final directory, its size (SFTP stat) and sha256 (on the target) are checked, and
// only when every file arrived whole are they renamed to their final names, in the order
// given (the caller puts its commit marker last). On failure the temporary files are removed
// when the connection still stands; a lost connection leaves at most temporary files, which
// the next install removes (their names carry TMP_TAG).
import { createHash } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import type { SFTPWrapper } from 'ssh2';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { shellQuote as q } from './agent-link.js';
import { TMP_TAG } from './agent-files.js';
import type { SshConnection } from './connect.js';
import { sh, shRun } from './target-shell.js';

/** One file to push. */
export interface Push {
  /** absolute final path on the target */
  final: string;
  /** the file's name in reports */
  name: string;
  source: { path: string } | { data: Buffer };
  size: number;
  sha256: string;
  mode: number;
}

export interface PushProgress {
  /** the file being pushed (its final path on the target) */
  file: string;
  /** bytes pushed so far, over all files of this push */
  bytes: number;
  /** bytes this push sends in all */
  totalBytes: number;
}

export interface PushOptions {
  onProgress?: (p: PushProgress) => void;
  /** the target has sha256sum; without it, node computes the sha256 there */
  hasSha256sum: boolean;
  /** that node: a path on the target, or one of the files pushed (run from its temporary name) */
  shaNode: string | Push;
  /** checks on the arrived files before they are committed; tmpOf gives a file's temporary name */
  beforeCommit?: (tmpOf: (p: Push) => string) => Promise<void>;
}

export function sha256Buf(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', (e) => reject(new VesperError(ErrorCode.USAGE, `cannot read ${path}: ${e.message}`)));
  });
}

/** A local file to push; `hint` follows the error when it cannot be read. */
export async function fileSource(final: string, name: string, path: string, mode: number, hint = ''): Promise<Push> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new VesperError(ErrorCode.USAGE, `cannot read ${path}: ${(err as Error).message}${hint}`);
  }
  return { final, name, source: { path }, size, sha256: await sha256File(path), mode };
}

export function dataSource(final: string, name: string, data: string, mode: number): Push {
  const b = Buffer.from(data);
  return { final, name, source: { data: b }, size: b.length, sha256: sha256Buf(b), mode };
}

function tmpName(final: string, tag: string): string {
  const slash = final.lastIndexOf('/');
  return `${final.slice(0, slash + 1)}.${final.slice(slash + 1)}${TMP_TAG}${tag}`;
}

/**
 * Pushes `files` whole or not at all (see the header); the bytes pushed. Throws
 * VSP_SSH_DISCONNECTED when the connection is lost, VSP_SSH_REMOTE_FAILED when a file arrived
 * short or damaged or the target refused it.
 */
export async function pushFiles(conn: SshConnection, files: Push[], o: PushOptions): Promise<number> {
  const totalBytes = files.reduce((s, p) => s + p.size, 0);
  let bytes = 0;
  let current = '';
  const onBytes = (n: number): void => {
    bytes += n;
    o.onProgress?.({ file: current, bytes, totalBytes });
  };
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const tmps = new Map<Push, string>(files.map((p) => [p, tmpName(p.final, tag)]));
  const tmpOf = (p: Push): string => tmps.get(p)!;

  const sftp = await conn.sftp();
  try {
    for (const p of files) {
      current = p.final;
      try {
        await upload(conn, sftp, p, tmpOf(p), onBytes);
      } catch (err) {
        throw await sftpError(conn, err, `pushing ${p.final} (${bytes} of ${totalBytes} bytes pushed)`);
      }
    }
    await checkSizes(conn, sftp, files, tmpOf);
    const shaNode = typeof o.shaNode === 'string' ? o.shaNode : (tmps.get(o.shaNode) ?? o.shaNode.final);
    await checkSha256(conn, files, tmpOf, o.hasSha256sum, shaNode);
    await o.beforeCommit?.(tmpOf);
    // Commit: final names, in the order given.
    for (const p of files) await renameInto(conn, sftp, tmpOf(p), p.final);
  } catch (err) {
    if (!conn.isClosed)
      await shRun(conn, `rm -f ${[...tmps.values()].map(q).join(' ')}`).catch(() => {
        /* best effort; the next install removes them too */
      });
    throw err;
  } finally {
    sftp.end();
  }
  return bytes;
}

/** Every file whole? Its size by SFTP. */
async function checkSizes(conn: SshConnection, sftp: SFTPWrapper, files: Push[], tmpOf: (p: Push) => string): Promise<void> {
  for (const p of files) {
    const tmp = tmpOf(p);
    let size = -1;
    try {
      size = await new Promise<number>((resolve, reject) => {
        conn.onClose(() => reject(new Error('connection closed')));
        sftp.stat(tmp, (err, st) => (err ? reject(err) : resolve(st.size)));
      });
    } catch (err) {
      throw await sftpError(conn, err, `checking ${tmp}`);
    }
    if (size !== p.size)
      throw new VesperError(
        ErrorCode.SSH_REMOTE_FAILED,
        `${conn.name}: ${tmp} has ${size} bytes, ${p.size} were sent (a full disk?); nothing was installed`,
      );
  }
}

/** Every file as sent? Its content by sha256 on the target. */
async function checkSha256(
  conn: SshConnection,
  files: Push[],
  tmpOf: (p: Push) => string,
  hasSha256sum: boolean,
  node: string,
): Promise<void> {
  const shas = await remoteSha(conn, hasSha256sum, node, files.map(tmpOf));
  for (const p of files) {
    const tmp = tmpOf(p);
    const got = shas.get(tmp);
    if (got !== p.sha256)
      throw new VesperError(
        ErrorCode.SSH_REMOTE_FAILED,
        `${conn.name}: ${tmp} arrived damaged (sha256 ${got ?? 'unreadable'}, sent ${p.sha256}); nothing was installed`,
      );
  }
}

/**
 * One SFTP request as a promise that also ends when the connection does: ssh2 leaves a
 * fastPut in flight hanging forever when the link drops under it.
 */
function sftpCall(conn: SshConnection, what: string, fn: (cb: (err?: Error | null) => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (err?: Error | null): void => {
      if (done) return;
      done = true;
      if (err) reject(Object.assign(err, { what }));
      else resolve();
    };
    conn.onClose(() => finish(new Error(`connection closed during ${what}`)));
    try {
      fn(finish);
    } catch (err) {
      finish(err as Error);
    }
  });
}

/** An SFTP failure said as one of our codes: a lost connection is VSP_SSH_DISCONNECTED. */
async function sftpError(conn: SshConnection, err: unknown, doing: string): Promise<VesperError> {
  if (err instanceof VesperError) return err;
  // ssh2 fails the request before the connection's close event: give that a moment.
  if (!conn.isClosed)
    await new Promise<void>((r) => {
      const t = setTimeout(r, 500);
      conn.onClose(() => {
        clearTimeout(t);
        r();
      });
    });
  const msg = (err as Error)?.message ?? String(err);
  if (conn.isClosed)
    return new VesperError(
      ErrorCode.SSH_DISCONNECTED,
      `${conn.name}: connection lost while ${doing}; nothing was installed under its final name (run the install again)`,
      msg,
      { cause: err },
    );
  return new VesperError(ErrorCode.SSH_REMOTE_FAILED, `${conn.name}: ${doing}: ${msg}`, '', { cause: err });
}
async function upload(conn: SshConnection, sftp: SFTPWrapper, p: Push, tmp: string, onBytes: (n: number) => void): Promise<void> {
  if ('path' in p.source) {
    const local = p.source.path;
    let last = 0;
    await sftpCall(conn, `upload ${p.name}`, (cb) =>
      sftp.fastPut(
        local,
        tmp,
        {
          mode: p.mode,
          concurrency: 16,
          chunkSize: 32 * 1024,
          step: (total) => {
            onBytes(total - last);
            last = total;
          },
        },
        cb,
      ),
    );
    if (last < p.size) onBytes(p.size - last);
  } else {
    const data = p.source.data;
    await sftpCall(conn, `upload ${p.name}`, (cb) => sftp.writeFile(tmp, data, { mode: p.mode }, cb));
    onBytes(data.length);
  }
  // fastPut/writeFile leave the mode to the umask on some servers: set it outright.
  await sftpCall(conn, `chmod ${p.name}`, (cb) => sftp.chmod(tmp, p.mode, cb));
}

async function renameInto(conn: SshConnection, sftp: SFTPWrapper, from: string, to: string): Promise<void> {
  try {
    await sftpCall(conn, `rename ${from}`, (cb) => sftp.ext_openssh_rename(from, to, cb));
  } catch (err) {
    if (conn.isClosed) throw err;
    // No posix-rename@openssh.com here (SFTP's own RENAME refuses an existing target).
    await sh(conn, `renaming ${from}`, `mv -f ${q(from)} ${q(to)}`);
  }
}

async function remoteSha(conn: SshConnection, hasSha256sum: boolean, node: string, paths: string[]): Promise<Map<string, string>> {
  if (!paths.length) return new Map();
  const files = paths.map(q).join(' ');
  const cmd = hasSha256sum
    ? `sha256sum ${files}`
    : `${q(node)} -e ${q(
        "const c=require('crypto'),f=require('fs');for(const p of process.argv.slice(1))console.log(c.createHash('sha256').update(f.readFileSync(p)).digest('hex')+'  '+p)",
      )} ${files}`;
  const out = await sh(conn, 'checking what arrived (sha256)', cmd, 120_000);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const mm = /^([0-9a-f]{64})\s+\*?(.+)$/.exec(line.trim());
    if (mm) m.set(mm[2]!, mm[1]!);
  }
  return m;
}
