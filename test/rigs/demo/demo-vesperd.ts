// What both demos do around their guest: a vesperd of their own on a throw-away configuration,
// the `vesper` CLI against it, its wait for the link, and `vesper events -f` on the terminal.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../helpers/project-root.js';

export const log = (msg: string): void => void process.stderr.write(`vesper demo: ${msg}\n`);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class DemoVesperd {
  readonly dir = mkdtempSync('/tmp/vesper-demo-');
  readonly socket = join(this.dir, 'vesperd.sock');
  private readonly cli = join(projectRoot(), 'dist/host/vesper.mjs');
  private daemon: ChildProcess | undefined;
  private follower: ChildProcess | undefined;

  /** `keyDir`: the host key the guest's agent trusts (VESPER_KEY_DIR). */
  constructor(private readonly keyDir: string) {}

  /** The CLI against this vesperd; its output. */
  vesper(...args: string[]): string {
    return execFileSync(process.execPath, [this.cli, '--socket', this.socket, ...args], { encoding: 'utf8' });
  }

  /** Starts vesperd watching `domains` (all of libvirt's when empty), its log on stderr at warn. */
  start(domains: string[] = []): void {
    const config = join(this.dir, 'vesper.yaml');
    writeFileSync(
      config,
      `daemon:\n  socket: ${this.socket}\n  log_level: warn\n` +
        (domains.length ? `libvirt:\n  domains: [${domains.join(', ')}]\n` : '') +
        `store:\n  path: ${join(this.dir, 'events.db')}\nactions:\n  fence_lock_dir: ${join(this.dir, 'fence')}\n`,
    );
    this.daemon = spawn(process.execPath, [this.cli, 'daemon', '--config', config], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, VESPER_KEY_DIR: this.keyDir },
    });
  }

  /** Waits (at most `seconds`) for vesperd's link to the VM's agent; throws if it never comes. */
  async waitLinked(vm: string, seconds: number): Promise<void> {
    for (let i = 0; i < seconds * 2; i++) {
      await sleep(500);
      try {
        if ((JSON.parse(this.vesper('status', vm, '-o', 'json')) as { link?: string }).link === 'connected') return;
      } catch {
        /* vesperd still starting */
      }
    }
    throw new Error(`vesperd did not link to the agent in ${vm} within ${seconds} s`);
  }

  /** `vesper events -f --vm VM` on this terminal, until stopFollowing() or stop(). */
  follow(vm: string): void {
    this.follower = spawn(process.execPath, [this.cli, '--socket', this.socket, 'events', '-f', '--vm', vm], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
  }

  stopFollowing(): void {
    this.follower?.kill();
  }

  /** Ends the follower and vesperd, and removes the demo's directory. */
  async stop(): Promise<void> {
    this.follower?.kill();
    this.daemon?.kill('SIGTERM');
    await sleep(1000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
