// Runs a vesper-agent on this machine over a unix socket ("host mode"): the agent reads
// this machine's own kernel events. Used by the demo, the acceptance tests and the
// benchmarks; the VM rig replaces it with a real guest.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { loadOrCreateHostKey, type HostKey } from '../keys.js';
import { agentBundlePath } from '../assets.js';
import { AGENT_NODE_FLAGS } from '../../contract/node-flags.js';
import { readProbeBundle, signModule } from '../probes/package.js';
import { AgentClient, type AgentClientOptions } from './agent-client.js';

export interface LocalAgentOptions {
  ringRecords?: number;
  ringMb?: number;
  traceBufferKb?: number;
  extraArgs?: string[];
  /** Options for node itself, before the bundle (for example --cpu-prof). */
  nodeArgs?: string[];
  /** where the agent's stderr goes (default: collected in memory, last 64 KiB) */
  stderr?: 'inherit' | 'collect';
  protect?: boolean;
  /** the run-state file (default: in the agent's own directory); give the same one to a successor */
  stateFile?: string;
}

export class LocalAgent {
  readonly dir: string;
  readonly socket: string;
  readonly key: HostKey;
  proc: ChildProcess | null = null;
  stderrTail = '';

  constructor(readonly opts: LocalAgentOptions = {}) {
    this.dir = mkdtempSync(join(tmpdir(), 'vesper-agent-'));
    this.socket = join(this.dir, 'agent.sock');
    this.key = loadOrCreateHostKey(join(this.dir, 'keys'));
    writeFileSync(join(this.dir, 'host.pub'), this.key.publicPem);
  }

  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  /** Starts the bundled agent and waits for its socket. */
  async start(): Promise<void> {
    const bundle = agentBundlePath();
    const o = this.opts;
    const args = [
      // What the agent's own entry adds when it starts itself again (it does not here: the
      // pool size is in the environment already).
      ...AGENT_NODE_FLAGS,
      ...(o.nodeArgs ?? []),
      bundle,
      '--transport',
      `unix:${this.socket}`,
      '--host-key',
      join(this.dir, 'host.pub'),
      '--ring-records',
      String(o.ringRecords ?? 65536),
      '--ring-mb',
      String(o.ringMb ?? 16),
      '--trace-buffer-kb',
      String(o.traceBufferKb ?? 1024),
      '--state-file',
      o.stateFile ?? join(this.dir, 'run-state'),
      ...(o.protect === false ? ['--no-protect'] : []),
      ...(o.extraArgs ?? []),
    ];
    const p = spawn(process.execPath, args, {
      stdio: ['ignore', 'ignore', o.stderr === 'inherit' ? 'inherit' : 'pipe'],
      env: { ...process.env, UV_THREADPOOL_SIZE: '64' },
    });
    this.proc = p;
    p.stderr?.on('data', (c: Buffer) => {
      this.stderrTail = (this.stderrTail + c.toString()).slice(-65536);
    });
    const deadline = Date.now() + 15_000;
    while (!existsSync(this.socket)) {
      if (p.exitCode !== null) throw new VesperError(ErrorCode.CONNECT_FAILED, `agent exited with ${p.exitCode}: ${this.stderrTail}`);
      if (Date.now() > deadline) throw new VesperError(ErrorCode.CONNECT_FAILED, `agent socket did not appear: ${this.stderrTail}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  connect(opts: AgentClientOptions = {}): Promise<AgentClient> {
    return AgentClient.connectUnix(this.socket, opts);
  }

  /** A probe module from dist/, signed with this agent's trusted key. */
  module(name: string) {
    return signModule(readProbeBundle(name), this.key);
  }

  /** Stops the agent (TERM, then KILL) and removes its directory. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
