// The service manager's end of sd_notify for a test, where systemd is not PID 1 (so
// `systemd-run --service-type=notify` cannot run the daemon): a unix datagram socket at
// NOTIFY_SOCKET that collects what the daemon sends. Node has no unix datagram sockets, so a
// small Python receiver holds it and writes each datagram as one JSON line.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { waitFor } from './wait.js';

const RECEIVER = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
out = open(sys.argv[2], 'a', buffering=1)
while True:
    out.write(json.dumps(s.recv(65536).decode('utf-8', 'replace')) + '\\n')
`;

export function whyNoNotifyReceiver(): string {
  if (spawnSync('python3', ['-c', 'import socket']).status !== 0) return 'python3 missing (the NOTIFY_SOCKET receiver)';
  if (spawnSync('systemd-notify', ['--help']).status !== 0) return 'systemd-notify missing (Debian package systemd)';
  return '';
}

/** Whether systemd runs this machine (then systemd-run could host the daemon instead). */
export function systemdIsPid1(): boolean {
  return existsSync('/run/systemd/system');
}

export class NotifySocket {
  private proc: ChildProcess | null = null;

  constructor(
    readonly path: string,
    private readonly out: string,
  ) {}

  async start(): Promise<void> {
    this.proc = spawn('python3', ['-c', RECEIVER, this.path, this.out], { stdio: 'ignore' });
    await waitFor('the notify socket', () => existsSync(this.path), 10_000, 50);
  }

  /** Every message received so far, each split into its KEY=value lines. */
  messages(): string[][] {
    if (!existsSync(this.out)) return [];
    return readFileSync(this.out, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as string).split('\n').filter(Boolean));
  }

  stop(): void {
    this.proc?.kill('SIGKILL');
    this.proc = null;
  }
}
