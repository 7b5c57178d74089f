import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ErrorCode, VesperError, exitStatusFor } from '../proto/errors.js';
import { VESPER_VERSION } from '../proto/version.js';
import { Agent } from './agent.js';
import { relay } from './channel/relay.js';
import { VirtioPortTransport, parseTransport } from './channel/transports.js';
import { createLogger } from './log.js';
import { DEFAULT_STATE_DIR, HostTrust, PIN_FILE, resetPin } from './modules/host-trust.js';
import { TrustedKeys } from './modules/verify.js';

/**
 * Parses the command line as documented: a usage error prints `VSP_USAGE` and its message and
 * ends with exit status 2 (commander's own default is 1); --help and --version end with 0.
 * Returns false when the program must not go on.
 */
export function parseUsage(program: Command, argv: string[]): boolean {
  program.exitOverride().configureOutput({
    outputError: (s, write) => write(`${program.name()}: ${ErrorCode.USAGE}: ${s.replace(/^error: /, '')}`),
  });
  try {
    program.parse(argv);
    return true;
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    process.exitCode = err.exitCode === 0 ? 0 : exitStatusFor(ErrorCode.USAGE);
    return false;
  }
}

function int(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`must be an integer >= ${min}`);
    return n;
  };
}

export async function run(argv: string[]): Promise<void> {
  const program = new Command('vesper-agent')
    .description('vesper guest agent: loads signed probe modules and streams kernel events to the host')
    .version(VESPER_VERSION)
    .option('-t, --transport <spec>', 'unix:PATH (listen), stdio, or virtio:PORT-NAME', 'virtio:org.vesper.agent.0')
    .option(
      '-k, --host-key <path>',
      "the host's ed25519 public key (PEM), or a directory of them: trusted as given, no enrolment (SSH installs)",
      process.env.VESPER_HOST_KEY,
    )
    .option(
      '--state-dir <dir>',
      'without --host-key: where the host key is pinned on first contact over the virtio-serial port (docs/trust.md)',
      DEFAULT_STATE_DIR,
    )
    .option('--ring-records <n>', 'records the ring holds until acknowledged', int(16), 65536)
    .option('--ring-mb <n>', 'megabytes of encoded records the ring holds', int(1), 16)
    .option('--trace-buffer-kb <n>', 'kernel trace buffer per CPU per probe instance', int(4), 1024)
    .option('--tracefs <path>', 'tracefs mount point (default: find or mount it)')
    .option('--max-frame-bytes <n>', 'largest frame accepted or sent', int(4096), 1 << 20)
    .option(
      '--state-file <path>',
      'run-state file (on tmpfs, e.g. /run/vesper-agent/run-state): lets the next agent report what a crash of this one lost',
    )
    .option('--probe-backlog <n>', "events a probe's worker may have waiting before more are dropped (and told as a loss)", int(16), 16_384)
    .option('--no-protect', 'do not set oom_score_adj or raise priority (tests)')
    .showHelpAfterError();
  if (!parseUsage(program, argv)) return;
  const o = program.opts<{
    transport: string;
    hostKey?: string;
    stateDir: string;
    ringRecords: number;
    ringMb: number;
    traceBufferKb: number;
    tracefs?: string;
    maxFrameBytes: number;
    protect: boolean;
    stateFile?: string;
    probeBacklog: number;
  }>();
  const log = createLogger();
  let agent: Agent;
  try {
    const transport = parseTransport(o.transport);
    // Enrolment only where only the hypervisor can reach the agent: its virtio-serial port.
    const trust = o.hostKey ? HostTrust.given(o.hostKey, log) : HostTrust.pinned(o.stateDir, transport instanceof VirtioPortTransport, log);
    log.info(
      trust.given !== null
        ? { hostKeys: trust.ids(), given: trust.given }
        : { hostKeys: trust.ids(), pin: trust.pinPath, enrols: trust.ids().length === 0 },
      trust.ids().length ? 'trusted host key' : 'not enrolled: the first host over the virtio-serial port is pinned',
    );
    agent = new Agent({
      transport,
      trust,
      log,
      ringRecords: o.ringRecords,
      ringBytes: o.ringMb * 1024 * 1024,
      traceBufferKb: o.traceBufferKb,
      tracefsPath: o.tracefs,
      maxFrameBytes: o.maxFrameBytes,
      stateFile: o.stateFile,
      probeBacklog: o.probeBacklog,
      // Leave four pool threads for everything else (file reads, the kernel log reader).
      readerThreads: Math.max(0, Number(process.env.UV_THREADPOOL_SIZE ?? 4) - 4),
    });
    if (o.protect) log.info({ protections: agent.protectSelf() }, 'self-protection');
    await agent.start();
  } catch (err) {
    const e = VesperError.from(err, ErrorCode.USAGE);
    log.fatal({ code: e.code }, e.message);
    process.exitCode = exitStatusFor(e.code);
    return;
  }

  // A probe's stray promise must not take the agent down.
  process.on('unhandledRejection', (reason) => log.error({ err: String((reason as Error)?.stack ?? reason) }, 'unhandled rejection'));
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ sig }, 'stopping');
    // Blocked kernel readers keep the process from exiting; if they do not wake, leave hard (after
    // up to 10 s asking systemd's state and 1.5 s writing the last records out).
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), 20_000).unref();
    agent
      .stop(sig)
      .catch((err: Error) => log.error({ err: err.message }, 'stop failed'))
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

/** `vesper-agent relay`: joins stdin/stdout (an SSH exec channel) to the agent's unix socket. */
export async function runRelay(argv: string[]): Promise<number> {
  const program = new Command('vesper-agent relay')
    .description("joins stdin/stdout (an SSH exec channel) to the agent daemon's unix socket")
    .requiredOption('-s, --socket <path>', "the agent daemon's socket (its --transport unix:PATH)")
    .option('--spawn', 'start the agent, detached, when nobody listens on the socket (targets without systemd)')
    .option('-k, --host-key <path>', "with --spawn: the host's public key for the agent")
    .option('--log <path>', "with --spawn: the agent's log file")
    .option('--pid-file <path>', "with --spawn: where the started agent's pid is kept")
    .option('--state-file <path>', "with --spawn: the started agent's run-state file (its --state-file)")
    .option('--wait-ms <n>', 'how long to wait for the socket', int(0), 15_000)
    .showHelpAfterError();
  if (
    !parseUsage(
      program,
      argv.filter((_, i) => i !== 2),
    )
  )
    return Number(process.exitCode ?? 2);
  const o = program.opts<{
    socket: string;
    spawn?: boolean;
    hostKey?: string;
    log?: string;
    pidFile?: string;
    stateFile?: string;
    waitMs: number;
  }>();
  // stdout is the frame stream: every word of the relay's own goes to stderr.
  const say = (m: string): void => void process.stderr.write(`vesper-agent relay: ${m}\n`);
  if (o.spawn && (!o.hostKey || !o.log || !o.pidFile)) {
    say('--spawn needs --host-key, --log and --pid-file');
    return 2;
  }
  return relay({
    socket: o.socket,
    waitMs: o.waitMs,
    spawn: o.spawn
      ? { hostKey: o.hostKey!, logFile: o.log!, pidFile: o.pidFile!, extraArgs: o.stateFile ? ['--state-file', o.stateFile] : [] }
      : undefined,
    log: say,
  });
}

/**
 * `vesper-agent enrol [--state-dir DIR] [--reset]`: shows the pinned host key; --reset (root
 * only) forgets it, so that the next host to reach the agent over its virtio-serial port is
 * pinned (the running agent reads the pin again at its next link). Returns the exit status.
 */
export function runEnrol(argv: string[]): number {
  const program = new Command('vesper-agent enrol')
    .description(
      'shows the host key this agent trusts; --reset forgets it (root only): the next host over the virtio-serial port is pinned',
    )
    .option('--state-dir <dir>', "the agent's state directory (its --state-dir)", DEFAULT_STATE_DIR)
    .option('--reset', 'forget the pinned host key (re-enrolment)')
    .showHelpAfterError();
  if (
    !parseUsage(
      program,
      argv.filter((_, i) => i !== 2),
    )
  )
    return Number(process.exitCode ?? 2);
  const o = program.opts<{ stateDir: string; reset?: boolean }>();
  const fail = (code: string, msg: string): number => {
    process.stderr.write(`vesper-agent enrol: ${code}: ${msg}\n`);
    return exitStatusFor(code);
  };
  const pin = join(o.stateDir, PIN_FILE);
  if (o.reset) {
    if (process.getuid?.() !== 0)
      return fail(ErrorCode.PERMISSION_DENIED, 'only root may re-enrol the agent (it decides which host the guest trusts)');
    let r: { removed: boolean; path: string };
    try {
      r = resetPin(o.stateDir);
    } catch (err) {
      return fail(ErrorCode.KEY_INVALID, `cannot remove ${pin}: ${(err as Error).message}`);
    }
    process.stdout.write(
      r.removed
        ? `forgot the pinned host key ${r.path}: the next host to reach this agent over its virtio-serial port is pinned. Restart the agent (systemctl restart vesper-agent) so that no module loaded under the old key keeps running.\n`
        : `no host key was pinned (${r.path}): the next host over the virtio-serial port is pinned\n`,
    );
    return 0;
  }
  if (!existsSync(pin)) {
    process.stdout.write(`not enrolled: no host key pinned in ${pin}; the next host over the virtio-serial port is pinned\n`);
    return 0;
  }
  try {
    const t = TrustedKeys.load(pin);
    process.stdout.write(`pinned host key ${t.ids().join(', ')} (${pin}, since ${statSync(pin).mtime.toISOString()})\n`);
    return 0;
  } catch (err) {
    const e = VesperError.from(err, ErrorCode.KEY_INVALID);
    return fail(e.code, `${e.message}; re-enrol with --reset`);
  }
}
