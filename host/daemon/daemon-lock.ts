// One store, one vesperd. A vesperd holds a kernel lock on a file beside its store for as long as
// it lives (an open file description lock, fcntl F_OFD_SETLK, through fs-native-extensions): the
// kernel drops it when the process dies however it dies, so a crash leaves no stale lock, and a
// second vesperd on the same configuration is refused before it opens the store, binds a socket
// or creates anything. A socket file alone cannot say this: the first vesperd may be alive and
// busy, and the second must never unlink a live socket as "stale".
import { closeSync, openSync, readFileSync, writeSync, ftruncateSync, constants } from 'node:fs';
import { createRequire } from 'node:module';
import { ErrorCode, VesperError } from '../../proto/errors.js';

const require = createRequire(import.meta.url);
const fsx = require('fs-native-extensions') as { tryLock(fd: number, opts?: { shared?: boolean }): boolean };

/** The lock file of a store: `<store>.lock`. */
export function lockPathOf(storePath: string): string {
  return `${storePath}.lock`;
}

export class DaemonLock {
  private constructor(
    readonly path: string,
    private fd: number | null,
  ) {}

  /**
   * Takes the lock or throws VSP_DAEMON_RUNNING, naming the holder's pid when the file says it.
   * Only the lock file is created (never truncated before the lock is held).
   */
  static acquire(path: string): DaemonLock {
    let fd: number;
    try {
      // libuv opens close-on-exec: an action's child process does not inherit the lock
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    } catch (err) {
      throw new VesperError(ErrorCode.STORE_FAILED, `cannot open the lock file ${path}: ${(err as Error).message}`, '', { cause: err });
    }
    let locked: boolean;
    try {
      locked = fsx.tryLock(fd);
    } catch (err) {
      closeSync(fd);
      throw new VesperError(ErrorCode.STORE_FAILED, `cannot lock ${path}: ${(err as Error).message}`, '', { cause: err });
    }
    if (!locked) {
      closeSync(fd);
      let holder = '';
      try {
        holder = readFileSync(path, 'utf8').trim().slice(0, 32);
      } catch {
        /* unreadable: no pid to name */
      }
      throw new VesperError(
        ErrorCode.DAEMON_RUNNING,
        `another vesperd${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} holds ${path}: one store, one vesperd; stop it first, or give this one another store.path and daemon.socket`,
      );
    }
    // Ours now: say who holds it (for the message above, and for an operator).
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    return new DaemonLock(path, fd);
  }

  /** Lets go (at stop; death lets go too). The file stays: removing it would race a newcomer. */
  release(): void {
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
  }
}
