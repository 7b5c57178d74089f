// `vesper-agent relay`: what an SSH exec channel runs. It joins the channel's stdin/stdout to
// the agent daemon's unix socket, byte for byte, so that over SSH the host speaks to the same
// long-lived agent, with the same record ring, as over a virtio-serial port: when the SSH link
// drops, only the relay ends; the agent keeps what was not acknowledged and resends it on the
// next link. With --spawn, a relay that finds no agent starts one, detached from the SSH
// session (for targets without systemd); a pid file keeps two relays from starting two.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { agentAlive } from '../ring/run-state.js';
import { dirname } from 'node:path';

export interface RelayOptions {
  socket: string;
  /** start the agent when nobody listens on the socket */
  spawn?: { hostKey: string; logFile: string; pidFile: string; extraArgs?: string[] };
  /** how long to wait for the socket, a spawned agent included (ms) */
  waitMs?: number;
  log: (msg: string) => void;
}

function tryConnect(path: string): Promise<net.Socket | null> {
  return new Promise((resolve) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', () => resolve(null));
  });
}

/** Starts the agent daemon unless the pid file names a live one; true when it started one. */
export function spawnAgent(socket: string, o: NonNullable<RelayOptions['spawn']>): boolean {
  mkdirSync(dirname(o.pidFile), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 2; attempt++) {
    let fd: number;
    try {
      fd = openSync(o.pidFile, 'wx', 0o600);
    } catch {
      const pid = Number(readFileSync(o.pidFile, 'utf8').trim());
      if (pid > 0 && agentAlive(pid)) return false;
      unlinkSync(o.pidFile); // stale: the agent it named is gone
      continue;
    }
    const log = openSync(o.logFile, 'a', 0o600);
    const child = spawn(
      process.execPath,
      [process.argv[1]!, '--transport', `unix:${socket}`, '--host-key', o.hostKey, ...(o.extraArgs ?? [])],
      {
        detached: true,
        stdio: ['ignore', log, log],
        env: { ...process.env, UV_THREADPOOL_SIZE: '64' },
      },
    );
    closeSync(log);
    writeFileSync(fd, `${child.pid}\n`);
    closeSync(fd);
    child.unref();
    return true;
  }
  return false;
}

/** Relays until either side ends; resolves with the exit status for the relay process. */
export async function relay(o: RelayOptions): Promise<number> {
  const deadline = Date.now() + (o.waitMs ?? 15_000);
  let sock = await tryConnect(o.socket);
  if (!sock && o.spawn) {
    if (spawnAgent(o.socket, o.spawn)) o.log(`started the agent (pid file ${o.spawn.pidFile}, log ${o.spawn.logFile})`);
  }
  while (!sock && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    if (existsSync(o.socket)) sock = await tryConnect(o.socket);
  }
  if (!sock) {
    o.log(`no agent answers on ${o.socket}${o.spawn ? ` (see ${o.spawn.logFile})` : ''}`);
    return 69;
  }
  const s = sock;
  s.setNoDelay?.(true);
  return new Promise((resolve) => {
    let done = false;
    const finish = (code: number): void => {
      if (done) return;
      done = true;
      s.destroy();
      // stdin still open would keep the process (and with it the SSH channel) alive after the
      // agent went away: the host would never see the link end.
      process.stdin.destroy();
      resolve(code);
    };
    s.on('data', (c: Buffer) => process.stdout.write(c));
    s.once('close', () => finish(0));
    s.once('error', (e) => {
      o.log(`agent socket: ${e.message}`);
      finish(69);
    });
    process.stdin.on('data', (c: Buffer) => s.write(c));
    // The SSH channel closed (the host went away): the agent sees its link end.
    process.stdin.once('end', () => finish(0));
    process.stdin.once('error', () => finish(0));
    process.stdout.once('error', () => finish(0));
  });
}
