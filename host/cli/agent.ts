// `vesper agent install|uninstall|status`: the agent on an SSH target, run from this process
// (not through vesperd). The target is a VM named in the config's ssh.targets, or --ssh
// user@host[:port]; flags given here win over the config's. A password is taken from the
// environment only (VESPER_SSH_PASSWORD, or the variable the config names), never from argv.
import { Command, Option } from 'commander';
import { ErrorCode, VesperError, exitStatusFor } from '../../proto/errors.js';
import type { AgentLayout } from '../ssh/agent-link.js';
import type { SshConnection, SshOptions } from '../ssh/connect.js';
import type { InstallReport } from '../ssh/install.js';
import type { StatusReport } from '../ssh/status.js';
import type { UninstallReport } from '../ssh/uninstall.js';
import type { InstallKey } from '../keys.js';

interface TargetFlags {
  ssh?: string;
  key?: string;
  knownHosts?: string;
  fingerprint?: string;
  acceptHostKey?: boolean;
  prefix?: string;
  runDir?: string;
  unit?: string;
  config?: string;
  connectTimeout?: string;
  output: 'table' | 'json';
}

/** One VM's entry in the config's ssh.targets, read defensively (the section is optional). */
export interface VmSshEntry {
  target: string;
  key?: string;
  knownHosts?: string;
  fingerprint?: string;
  passwordEnv?: string;
  prefix?: string;
  runDir?: string;
}

/** The SSH target configured for a VM, or null. */
export function sshEntryForVm(config: unknown, vm: string): VmSshEntry | null {
  const targets = (config as { ssh?: { targets?: Record<string, unknown> } } | null)?.ssh?.targets;
  const e = targets && Object.prototype.hasOwnProperty.call(targets, vm) ? targets[vm] : undefined;
  if (!e || typeof e !== 'object' || typeof (e as VmSshEntry).target !== 'string') return null;
  return e as VmSshEntry;
}

interface Resolved {
  ssh: SshOptions;
  layout: AgentLayout;
}

async function resolve(vm: string | undefined, o: TargetFlags): Promise<Resolved> {
  const { parseSshTarget } = await import('../ssh/target.js');
  const { DEFAULT_AGENT_LAYOUT } = await import('../ssh/agent-link.js');
  const { parseDuration } = await import('../config/units.js');
  if (vm && o.ssh) throw new VesperError(ErrorCode.USAGE, 'give a VM name or --ssh user@host[:port], not both');
  if (!vm && !o.ssh)
    throw new VesperError(ErrorCode.USAGE, 'which target? give a VM name (from the config ssh.targets) or --ssh user@host[:port]');
  let entry: VmSshEntry | null = null;
  let connectTimeoutMs: number | undefined;
  if (vm) {
    const { loadConfig, DEFAULT_CONFIG_PATH } = await import('../config/load.js');
    const config = loadConfig(o.config);
    entry = sshEntryForVm(config, vm);
    if (!entry)
      throw new VesperError(
        ErrorCode.VM_NOT_FOUND,
        `no SSH target for VM ${JSON.stringify(vm)} in ${o.config ?? DEFAULT_CONFIG_PATH} (ssh.targets); or give --ssh user@host[:port]`,
      );
    const ct = (config as { ssh?: { connectTimeout?: unknown } }).ssh?.connectTimeout;
    if (typeof ct === 'number') connectTimeoutMs = ct;
  }
  if (o.connectTimeout !== undefined) {
    try {
      connectTimeoutMs = parseDuration(o.connectTimeout);
    } catch (err) {
      throw new VesperError(ErrorCode.USAGE, `--connect-timeout: ${(err as Error).message}`);
    }
  }
  const target = parseSshTarget(o.ssh ?? entry!.target);
  const passwordEnv = entry?.passwordEnv ?? 'VESPER_SSH_PASSWORD';
  const password = process.env[passwordEnv];
  const ssh: SshOptions = {
    target,
    ...((o.key ?? entry?.key) ? { keyFile: o.key ?? entry?.key } : {}),
    ...((o.knownHosts ?? entry?.knownHosts) ? { knownHosts: o.knownHosts ?? entry?.knownHosts } : {}),
    ...((o.fingerprint ?? entry?.fingerprint) ? { fingerprint: o.fingerprint ?? entry?.fingerprint } : {}),
    ...(password !== undefined && password !== '' ? { password } : {}),
    ...(o.acceptHostKey ? { acceptHostKey: true } : {}),
    ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}),
  };
  // A bad layout is a usage error before any connection is made.
  const { checkLayout } = await import('../ssh/agent-files.js');
  const layout = checkLayout({
    prefix: o.prefix ?? entry?.prefix ?? DEFAULT_AGENT_LAYOUT.prefix,
    runDir: o.runDir ?? entry?.runDir ?? DEFAULT_AGENT_LAYOUT.runDir,
    unit: o.unit ?? DEFAULT_AGENT_LAYOUT.unit,
  });
  return { ssh, layout };
}

async function withConnection<T>(
  vm: string | undefined,
  o: TargetFlags,
  fn: (c: SshConnection, layout: AgentLayout) => Promise<T>,
  /** checks that need no connection (and create nothing), after the usage checks */
  beforeConnect?: () => Promise<void>,
): Promise<T> {
  const r = await resolve(vm, o);
  await beforeConnect?.();
  const { SshConnection } = await import('../ssh/connect.js');
  const c = await SshConnection.connect(r.ssh);
  if (c.hostKey.trust === 'accepted')
    process.stderr.write(`vesper: accepted ${c.name}'s host key ${c.hostKey.fingerprint} (${c.hostKey.type}), recorded in known_hosts\n`);
  try {
    return await fn(c, r.layout);
  } finally {
    c.close();
  }
}

function targetOptions(cmd: Command): Command {
  return cmd
    .argument('[vm]', 'a VM named in the config (ssh.targets)')
    .option('--ssh <user@host[:port]>', 'the target, instead of a VM name')
    .option('--key <file>', 'private key file (default: ssh-agent and ~/.ssh/id_*); a password only from env VESPER_SSH_PASSWORD')
    .option('--known-hosts <file>', 'known_hosts to check the host key against (default ~/.ssh/known_hosts)')
    .option('--fingerprint <SHA256:…>', 'a pinned host key fingerprint, checked instead of known_hosts')
    .option('--accept-host-key', 'accept the key the host shows, even an unknown or changed one, and record it in known_hosts')
    .option('--prefix <dir>', "the agent's directory on the target (default /opt/vesper-agent)")
    .option('--run-dir <dir>', "the agent's socket, pid file and log on the target (default /run/vesper-agent)")
    .option('--unit <name>', 'the systemd unit on targets with systemd (default vesper-agent-ssh.service)')
    .option('-c, --config <file>', 'config file naming VMs (default /etc/vesper/vesper.yaml)')
    .option('--connect-timeout <duration>', 'TCP connect, handshake and authentication (default 15s)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'));
}

const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;

function printInstall(r: InstallReport, o: TargetFlags): void {
  if (o.output === 'json') return void process.stdout.write(`${JSON.stringify(r)}\n`);
  const lines = [
    `installed the vesper agent on ${r.target} in ${r.seconds.toFixed(1)} s${r.restarted ? ' (the running agent was restarted onto it)' : ''}`,
    `  prefix     ${r.prefix}   run dir ${r.runDir}`,
    `  node       ${r.node.path} ${r.node.version}${r.node.pushed ? ' (pushed from this host)' : " (the target's)"}`,
    r.systemd
      ? `  started by systemd: ${r.unit} (enabled at boot)`
      : `  started by the relay on the first link: the target has no systemd; at boot run: ${r.bootHint}`,
    `  agent      ${r.agent.version}, pid ${r.agent.pid}, kernel ${r.agent.kernel}, host ${r.agent.hostname}: answering`,
    `  pushed     ${mb(r.bytesPushed)}${r.unchanged.length ? ` (unchanged: ${r.unchanged.join(', ')})` : ''}; bundle sha256 ${r.bundle.sha256.slice(0, 16)}…`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

function printUninstall(r: UninstallReport, o: TargetFlags): void {
  if (o.output === 'json') return void process.stdout.write(`${JSON.stringify(r)}\n`);
  const lines = [r.message];
  if (r.stopped.length) lines.push(`  stopped    ${r.stopped.join(' ')}`);
  if (r.removed)
    lines.push(
      `  removed    ${[r.unitRemoved && 'unit', r.prefixRemoved && 'prefix', r.runDirRemoved && 'run dir'].filter(Boolean).join(', ') || 'nothing on disk'}`,
    );
  process.stdout.write(lines.join('\n') + '\n');
}

function printStatus(r: StatusReport, o: TargetFlags): void {
  if (o.output === 'json') return void process.stdout.write(`${JSON.stringify(r)}\n`);
  if (!r.installed) return void process.stdout.write(`${r.target}: the agent is not installed (under ${r.prefix})\n`);
  const rec = r.record!;
  const lines = [
    `${r.target}: agent ${rec.version} installed ${rec.installedAt} under ${r.prefix}`,
    `  bundle     sha256 ${(r.bundleSha256 ?? 'missing').slice(0, 16)}…${r.bundleIntact === false ? ' (NOT what install pushed)' : ' (as installed)'}`,
    `  node       ${rec.node.path} ${rec.node.version}${rec.node.pushed ? ' (pushed)' : ''}`,
    r.systemd
      ? `  systemd    ${r.unit ? `${r.unit.name}: ${r.unit.active || 'unknown'}, ${r.unit.enabled || 'unknown'}` : 'unit missing'}`
      : `  no systemd ${r.pid ? `agent pid ${r.pid}` : 'agent not running (the next link starts it)'}`,
    r.answering
      ? `  answering  ${r.agent!.version}, pid ${r.agent!.pid}, kernel ${r.agent!.kernel}; probes: ${r.agent!.probes.join(', ') || 'none'}`
      : `  answering  no: ${r.error?.code}: ${r.error?.message}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

export function addAgentCommands(program: Command): void {
  const agent = program.command('agent').description('the agent on an SSH target: install, uninstall, status (run from here, not vesperd)');

  targetOptions(agent.command('install'))
    .description(
      "push the agent and vesperd's public key (VESPER_KEY_DIR, else /etc/vesper) over SFTP, start it (systemd unit, or the relay), check it answers",
    )
    .option('--push-node', "push this host's node even when the target has Node >= 20")
    .action(async (vm: string | undefined, o: TargetFlags & { pushNode?: boolean }) => {
      const { installAgent } = await import('../ssh/install.js');
      const { progressView } = await import('../ssh/progress.js');
      const { installKeyPlan, loadOrCreateHostKey } = await import('../keys.js');
      // vesperd's key, found (or refused) before connecting; created, when it must be, only
      // once the target is reached.
      let plan: InstallKey | undefined;
      const view = progressView();
      try {
        const r = await withConnection(
          vm,
          o,
          (c, layout) => {
            let hostPublicPem: string;
            if (plan!.create) {
              hostPublicPem = loadOrCreateHostKey(plan!.dir).publicPem;
              view.log(`created vesperd's signing key ${plan!.dir}/host.key (vesperd signs probe modules with it)`);
            } else hostPublicPem = plan!.publicPem;
            return installAgent(c, { layout, hostPublicPem, forceNode: o.pushNode, onProgress: view.onProgress, log: view.log });
          },
          () => {
            plan = installKeyPlan();
            return Promise.resolve();
          },
        );
        view.stop();
        printInstall(r, o);
      } finally {
        view.stop();
      }
    });

  targetOptions(agent.command('uninstall'))
    .description('stop the agent and remove its unit, files and run dir (nothing installed: says so, exit 0)')
    .action(async (vm: string | undefined, o: TargetFlags) => {
      const { uninstallAgent } = await import('../ssh/uninstall.js');
      const r = await withConnection(vm, o, (c, layout) =>
        uninstallAgent(c, { layout, log: (m) => void process.stderr.write(`vesper: ${m}\n`) }),
      );
      printUninstall(r, o);
    });

  targetOptions(agent.command('status'))
    .description('installed? which bundle, the unit or pid, and whether the agent answers (exit 3 not installed, 69 not answering)')
    .action(async (vm: string | undefined, o: TargetFlags) => {
      const { agentStatus } = await import('../ssh/status.js');
      const r = await withConnection(vm, o, (c, layout) => agentStatus(c, { layout }));
      printStatus(r, o);
      // The report is printed either way; the exit status says what scripts need to know.
      const code = !r.installed ? ErrorCode.AGENT_NOT_INSTALLED : !r.answering ? (r.error?.code ?? ErrorCode.AGENT_NOT_ANSWERING) : '';
      if (code) {
        process.stderr.write(
          `vesper: ${code}: ${!r.installed ? `${r.target}: the agent is not installed under ${r.prefix}` : r.error?.message}\n`,
        );
        process.exitCode = exitStatusFor(code);
      }
    });
}
