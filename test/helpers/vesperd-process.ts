// vesperd and the vesper CLI as the separate processes users run, for acceptance tests and
// benchmarks: the config file a test's vesperd reads, the daemon from the built bundle with
// it, the CLI with a time limit (as root or as another user), and `events -f -o json`
// followers that collect what they print.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import type { z } from 'zod';
import type { fileSchema } from '../../host/config/schema.js';
import { projectRoot } from './project-root.js';
import { sleep, waitFor } from './wait.js';

export const VESPER = join(projectRoot(), 'dist/host/vesper.mjs');

/**
 * `vesper attach VM ...` arguments after the VM name for the record storms the tests make: the
 * signal probe taking the SIGUSR1s that a storm sends to a `sleep` ignoring them.
 */
export const USR1_STORM_PROBE = ['signal', '--param', 'signals=USR1', '--param', 'include_ignored=true', '--param', 'comms=sleep'];

/** A vesperd config file's sections as written: snake_case keys, durations such as '1s'. */
export type VesperdConfigFile = z.input<typeof fileSchema>;

export interface VesperdConfigOptions {
  /** the API socket (daemon.socket) */
  socket: string;
  /** the event store (store.path) */
  store: string;
  /**
   * The libvirt domains this vesperd links to (names or globs): the test's own only, since the
   * other VMs on this libvirtd (other tests', other people's) are not ours to link to.
   */
  domains: string[];
  /** the group that may use the socket besides root (default root: root only) */
  group?: string;
  /** actions.fence_lock_dir (default: `fence` beside the store, never the host's own) */
  fenceLockDir?: string;
  /** any other setting as the file has it (libvirt.uri, actions.rate_limit, pacemaker, ssh, attach, ...) */
  more?: VesperdConfigFile;
}

/**
 * Writes the config of a test's vesperd to `path` (and returns `path`): the options above, log
 * level info, and channel timings that bring a lost link back within a second (keepalive 1s,
 * reconnect 100 ms to 1 s); `more` is merged over them section by section.
 */
export function writeVesperdConfig(path: string, o: VesperdConfigOptions): string {
  const { daemon, libvirt, store, channel, actions, ...sections } = o.more ?? {};
  const file: VesperdConfigFile = {
    daemon: { socket: o.socket, group: o.group ?? 'root', log_level: 'info', ...daemon },
    libvirt: { domains: o.domains, ...libvirt },
    store: { path: o.store, ...store },
    channel: { keepalive: '1s', reconnect_min: '100ms', reconnect_max: '1s', ...channel },
    actions: { fence_lock_dir: o.fenceLockDir ?? join(dirname(o.store), 'fence'), ...actions },
    ...sections,
  };
  writeFileSync(path, stringify(file));
  return path;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** An event as `vesper events -o json` prints it; P: what a test knows of its payload. */
export interface EventLine<P = Record<string, unknown> | null> {
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
  payload: P;
}

/** Who else runs the CLI, for permission tests (through setpriv). */
export interface CliUser {
  uid: number;
  gid: number;
  /** supplementary groups (none when empty) */
  groups?: number[];
  /**
   * the CLI bundle to run (default VESPER): another user may not be able to read the checkout,
   * so such tests run a copy (test/helpers/cli-copy.ts)
   */
  vesper?: string;
}

export class VesperdProcess {
  private daemon: ChildProcess | null = null;
  private readonly spawned: ChildProcess[] = [];
  /** the daemon's stderr (its log), the last 64 KB */
  log = '';
  /** when each daemon started, was signalled and exited (for a failing test's report) */
  readonly trail: string[] = [];
  /** more environment for the daemon (NOTIFY_SOCKET, WATCHDOG_USEC, ...) */
  env: Record<string, string> = {};

  constructor(
    readonly configPath: string,
    readonly socket: string,
    /** VESPER_KEY_DIR for the daemon (default the checkout's .cache/keys); a host-mode agent's own keys to trust it */
    readonly keyDir = join(projectRoot(), '.cache', 'keys'),
  ) {}

  /** The CLI against this daemon, as a separate process; as another user when `as` is given. */
  cli(args: string[], timeoutMs = 60_000, as?: CliUser): Promise<Run> {
    const argv = [as?.vesper ?? VESPER, '--socket', this.socket, ...args];
    const [cmd, full] = as
      ? [
          'setpriv',
          [
            `--reuid=${as.uid}`,
            `--regid=${as.gid}`,
            as.groups?.length ? `--groups=${as.groups.join(',')}` : '--clear-groups',
            process.execPath,
            ...argv,
          ],
        ]
      : [process.execPath, argv];
    return new Promise((resolve) => {
      execFile(cmd, full, { timeout: timeoutMs, cwd: '/' }, (err, stdout, stderr) => {
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

  /** `vesper status VM` says the link is up (false on any error: the daemon may not answer yet). */
  linked(vm: string): Promise<boolean> {
    return this.json<{ link: string }>(['status', vm]).then(
      (st) => st.link === 'connected',
      () => false,
    );
  }

  /** The link is up and every attached probe is loaded (at least one attached). */
  probesLoaded(vm: string): Promise<boolean> {
    return this.json<{ link: string; attached: Array<{ loaded: boolean }> }>(['status', vm]).then(
      (st) => st.link === 'connected' && st.attached.length > 0 && st.attached.every((p) => p.loaded),
      () => false,
    );
  }

  /** Waits (bounded) until vesperd has linked to the VM's agent. */
  async waitLinked(vm: string, timeoutMs = 60_000, stepMs = 500): Promise<void> {
    await waitFor('vesperd links to the agent', () => this.linked(vm), timeoutMs, stepMs);
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
      env: { ...process.env, VESPER_KEY_DIR: this.keyDir, ...this.env },
    });
    p.stderr.on('data', (c: Buffer) => (this.log = (this.log + c.toString()).slice(-65_536)));
    p.on('exit', (code, sig) => this.note(`vesperd ${p.pid} exited: ${code ?? sig}`));
    this.note(`vesperd ${p.pid} started`);
    this.daemon = p;
    this.spawned.push(p);
    await waitFor('vesperd answers', async () => existsSync(this.socket) && (await this.cli(['list'])).code === 0, 60_000, 200);
  }

  /** the running daemon's pid (0 when none) */
  get pid(): number {
    const p = this.daemon;
    return p && p.exitCode === null && p.signalCode === null ? (p.pid ?? 0) : 0;
  }

  /** Sends a signal to the running daemon without waiting for anything. */
  signal(sig: NodeJS.Signals): void {
    this.note(`vesperd ${this.daemon?.pid}: ${sig}`);
    this.daemon?.kill(sig);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.daemon;
    this.daemon = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    this.note(`vesperd ${p.pid}: ${signal}`);
    p.kill(signal);
    await Promise.race([gone, sleep(15_000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }

  /** `vesper events -f -o json` with these filters: the lines as they come. */
  follow<P = EventLine['payload']>(args: string[] = []): { lines: EventLine<P>[]; stop: () => void } {
    const p = spawn(process.execPath, [VESPER, '--socket', this.socket, 'events', '-f', '-o', 'json', ...args], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    this.spawned.push(p);
    const lines: EventLine<P>[] = [];
    createInterface({ input: p.stdout }).on('line', (l) => lines.push(JSON.parse(l) as EventLine<P>));
    return { lines, stop: () => p.kill() };
  }

  private note(what: string): void {
    this.trail.push(`${new Date().toISOString()} ${what}`);
  }

  /** Every process this object started, killed (for afterAll, whatever happened). */
  async killAll(): Promise<void> {
    await this.stop();
    for (const p of this.spawned) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}
