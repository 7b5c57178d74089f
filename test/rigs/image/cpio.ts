// A cpio "newc" writer for initramfs images. Writing the archive ourselves (instead of staging
// a tree for cpio(1)) lets every entry be root-owned with exact modes, and lets the image hold
// device nodes, without touching the host's filesystem.
import { createReadStream, statSync } from 'node:fs';
import { dirname } from 'node:path';

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; mode: number; data: Buffer }
  /** Streamed from the host at write time: node alone is ~100 MB. */
  | { kind: 'hostFile'; path: string; mode: number; source: string }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; mode: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}

function header(ino: number, mode: number, size: number, name: string, rdev: [number, number] = [0, 0]): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
  // mtime 0 keeps the archive a function of its contents.
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], nameBytes.length, 0];
  const h = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`, 'latin1');
  return Buffer.concat([h, nameBytes, pad4(h.length + nameBytes.length)]);
}

/**
 * The archive as a stream of chunks. The kernel's unpacker does not create missing parent
 * directories, so every parent is emitted (once) before its first child.
 */
export async function* cpioChunks(entries: Iterable<CpioEntry>): AsyncGenerator<Buffer> {
  const dirs = new Set<string>(['.']);
  let ino = 1;
  function* parents(path: string): Generator<Buffer> {
    const missing: string[] = [];
    for (let d = dirname(path); !dirs.has(d) && d !== '/'; d = dirname(d)) missing.unshift(d);
    for (const d of missing) {
      dirs.add(d);
      yield header(ino++, S_IFDIR | 0o755, 0, d);
    }
  }
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    yield* parents(path);
    switch (e.kind) {
      case 'dir':
        if (dirs.has(path)) break;
        dirs.add(path);
        yield header(ino++, S_IFDIR | (e.mode ?? 0o755), 0, path);
        break;
      case 'file':
        yield header(ino++, S_IFREG | e.mode, e.data.length, path);
        yield e.data;
        yield pad4(e.data.length);
        break;
      case 'hostFile': {
        const size = statSync(e.source).size;
        yield header(ino++, S_IFREG | e.mode, size, path);
        let sent = 0;
        for await (const chunk of createReadStream(e.source, { highWaterMark: 1 << 20 })) {
          sent += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
        if (sent !== size) throw new Error(`${e.source} changed size while being archived`);
        yield pad4(size);
        break;
      }
      case 'symlink': {
        const target = Buffer.from(e.target, 'utf8');
        yield header(ino++, S_IFLNK | 0o777, target.length, path);
        yield target;
        yield pad4(target.length);
        break;
      }
      case 'chardev':
        yield header(ino++, S_IFCHR | e.mode, 0, path, [e.major, e.minor]);
        break;
    }
  }
  yield header(0, 0, 0, 'TRAILER!!!');
}
