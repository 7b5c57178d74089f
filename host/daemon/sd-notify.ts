// systemd's notification protocol for `Type=notify` and `WatchdogSec=`: READY=1 once vesperd
// serves, RELOADING=1 / READY=1 around a SIGHUP reload, STOPPING=1, and WATCHDOG=1 from a timer
// of the event loop (a loop that hangs stops feeding it, and systemd restarts the service).
//
// The messages are datagrams to the unix socket $NOTIFY_SOCKET. Node has no unix datagram
// sockets, and the npm packages that add them are native addons (sd-notify, unix-dgram) or a
// prebuilt Rust binary (node-unix-socket), each one more thing to build and ship for every
// Node ABI. systemd's own `systemd-notify` does exactly this send and is there wherever
// systemd is; run with --pid=<vesperd's pid> it sends vesperd's credentials, so systemd
// takes the message as the main process's (the unit also says NotifyAccess=all, for systemd
// versions that check the sender's cgroup instead). A message is a spawn: a few ms, at most
// once per half watchdog period, never on the ingest path.
import { execFile } from 'node:child_process';

export interface NotifyOptions {
  env?: NodeJS.ProcessEnv;
  /** told once when a message cannot be sent (the binary missing...) */
  warn?: (what: string) => void;
  /** the program to run (default systemd-notify on PATH) */
  program?: string;
}

export class SdNotify {
  private readonly socket: string | undefined;
  private timer: NodeJS.Timeout | null = null;
  private warned = false;
  /** messages sent (their child exited 0), for tests and status */
  sent = 0;

  constructor(private readonly o: NotifyOptions = {}) {
    this.socket = (o.env ?? process.env)['NOTIFY_SOCKET'] || undefined;
  }

  /** Whether a service manager listens. */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** Sends `KEY=value` lines (READY=1, STATUS=..., ...); resolves when sent or failed. */
  notify(...lines: string[]): Promise<boolean> {
    if (!this.socket) return Promise.resolve(false);
    return new Promise((resolve) => {
      execFile(
        this.o.program ?? 'systemd-notify',
        [`--pid=${process.pid}`, ...lines],
        { env: { ...(this.o.env ?? process.env), NOTIFY_SOCKET: this.socket }, timeout: 5000 },
        (err, _out, stderr) => {
          if (err) {
            if (!this.warned) {
              this.warned = true;
              this.o.warn?.(`cannot notify the service manager (${lines.join(' ')}): ${String(stderr).trim() || err.message}`);
            }
            resolve(false);
            return;
          }
          this.sent++;
          resolve(true);
        },
      );
    });
  }

  /**
   * Feeds systemd's watchdog every half period while WATCHDOG_USEC asks for it (and
   * WATCHDOG_PID, if set, is ours). Returns the period in ms, 0 when there is no watchdog.
   */
  startWatchdog(): number {
    const env = this.o.env ?? process.env;
    const usec = Number(env['WATCHDOG_USEC'] ?? 0);
    const pid = env['WATCHDOG_PID'];
    if (!this.socket || !(usec > 0) || (pid !== undefined && pid !== '' && Number(pid) !== process.pid)) return 0;
    const every = Math.max(100, Math.floor(usec / 2000));
    void this.notify('WATCHDOG=1');
    this.timer = setInterval(() => void this.notify('WATCHDOG=1'), every);
    this.timer.unref();
    return every;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
