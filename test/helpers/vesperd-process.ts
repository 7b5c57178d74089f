// vesperd and the vesper CLI as the separate processes users run, for acceptance tests and
// benchmarks: the daemon from the built bundle with a given config, the CLI with a time
// limit, and `events -f -o json` followers that collect what they print.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { projectRoot } from '../../host/probes/package.js';
import { sleep, waitFor } from './wait.js';

export const VESPER = join(projectRoot(), 'dist/host/vesper.mjs');

/**
 * `vesper attach VM ...` arguments after the VM name for the record storms the tests make: the
 * signal probe taking the SIGUSR1s that a storm sends to a `sleep` ignoring them.
 */
export const USR1_STORM_PROBE = ['signal', '--param', 'signals=USR1', '--param', 'include_ignored=true', '--param', 'comms=sleep'];

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** An event as `vesper events -o json` prints it. */
export interface EventLine {
  id: number;
  vm: string;
  plugin: string;
  instance: number;
  event: string;
  guestTimeUs: number | null;
  hostTimeUs: number;
  agentRun: string | null;
  seq: number | null;
  disposition: string;
  payload: Record<string, unknown> | null;
}

export class VesperdProcess {
  private daemon: ChildProcess | null = null;
  private readonly spawned: ChildProcess[] = [];
  /** the daemon's stderr (its log), the last 64 KB */
  log = '';

  constructor(
    readonly configPath: string,
    readonly socket: string,
  ) {}

  /** The CLI against this daemon, as a separate process. */
  cli(args: string[], timeoutMs = 60_000): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, [VESPER, '--socket', this.socket, ...args], { timeout: timeoutMs, cwd: '/' }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      });
    });
  }

  /** The CLI's `-o json` answer; throws with its stderr when it fails. */
  async json<T>(args: string[]): Promise<T> {
    const r = await this.cli([...args, '-o', 'json']);
    if (r.code !== 0) throw new Error(`vesper ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** Runs the CLI and throws unless it succeeds. */
  async ok(args: string[]): Promise<string> {
    const r = await this.cli(args);
    if (r.code !== 0) throw new Error(`vesper ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return r.stdout;
  }

  async start(): Promise<void> {
    const p = spawn(process.execPath, [VESPER, 'daemon', '--config', this.configPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, VESPER_KEY_DIR: join(projectRoot(), '.cache', 'keys') },
    });
    p.stderr!.on('data', (c: Buffer) => (this.log = (this.log + c.toString()).slice(-65_536)));
    this.daemon = p;
    this.spawned.push(p);
    await waitFor('vesperd answers', async () => existsSync(this.socket) && (await this.cli(['list'])).code === 0, 60_000, 200);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.daemon;
    this.daemon = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await Promise.race([gone, sleep(15_000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }

  /** `vesper events -f -o json` with these filters: the lines as they come. */
  follow(args: string[] = []): { lines: EventLine[]; stop: () => void } {
    const p = spawn(process.execPath, [VESPER, '--socket', this.socket, 'events', '-f', '-o', 'json', ...args], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    this.spawned.push(p);
    const lines: EventLine[] = [];
    createInterface({ input: p.stdout! }).on('line', (l) => lines.push(JSON.parse(l) as EventLine));
    return { lines, stop: () => p.kill() };
  }

  /** Every process this object started, killed (for afterAll, whatever happened). */
  async killAll(): Promise<void> {
    await this.stop();
    for (const p of this.spawned) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}
