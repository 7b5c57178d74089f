// `vesper failover VM --standby-uri URI`: the failover action run by hand, from this process
// against the two libvirts (like `vesper channel`, no vesperd needed): an operator's move after
// Pacemaker's STONITH, or a script's. The same FenceThenStart as the filter action, with the same
// guard: it refuses unless the standby's libvirt refuses a second QEMU on the VM's disks. Settings
// come from the config file when there is one (fence_lock_dir, standby_uri,
// require_lock_manager, libvirt.uri); options override them. The exit status says what happened:
// 0 moved; 78 VSP_FAILOVER_UNGUARDED; 75 VSP_DISK_LOCKED; 69 VSP_PRIMARY_UNREACHABLE; 1 others.
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { Command, Option } from 'commander';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { FailoverError, failover, type FailoverResult } from '../actions/failover.js';
import { FenceLock } from '../actions/fence-lock.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../config/load.js';
import { parseDuration } from '../config/units.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';

interface FailoverCliOptions {
  standbyUri?: string;
  primaryUri?: string;
  standbyName?: string;
  config?: string;
  lockDir?: string;
  confirmTimeout: string;
  output: 'text' | 'json';
}

export function addFailoverCommand(program: Command): void {
  program
    .command('failover')
    .description(
      "fence VM on this host's libvirt (destroy, confirm shut off) and start it on the standby; refuses unless libvirt's lock manager guards its disks",
    )
    .argument('<vm>')
    .option('--standby-uri <uri>', 'the standby libvirt (default: actions.standby_uri of the config)')
    .option('--primary-uri <uri>', 'the libvirt the VM runs on (default: libvirt.uri of the config, else qemu:///system)')
    .option('--standby-name <name>', 'the name on the standby (default: the same)')
    .option('-c, --config <file>', `config file (default ${DEFAULT_CONFIG_PATH} if it exists)`)
    .option('--lock-dir <dir>', 'the fence lease directory (default: actions.fence_lock_dir)')
    .option('--confirm-timeout <duration>', 'how long the primary may take to report the VM shut off', '60s')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (vm: string, o: FailoverCliOptions) => {
      const path = o.config ?? (existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
      const c = path ? loadConfig(path) : null;
      const standbyUri = o.standbyUri ?? c?.actions.standbyUri;
      if (!standbyUri) throw new VesperError(ErrorCode.USAGE, 'failover needs --standby-uri URI (or actions.standby_uri in the config)');
      let confirmTimeoutMs: number;
      try {
        confirmTimeoutMs = parseDuration(o.confirmTimeout);
      } catch (err) {
        throw new VesperError(ErrorCode.USAGE, `--confirm-timeout: ${(err as Error).message}`);
      }
      const lockDir = o.lockDir ?? c?.actions.fenceLockDir ?? '/var/lib/vesper/fence';
      const primaryUri = o.primaryUri ?? c?.libvirt.uri ?? 'qemu:///system';
      const { UnraidHypervisor } = await import('../libvirt/unraid.js');
      const opened: Hypervisor[] = [];
      /** A libvirt connection, kept to be closed; which end could not be reached decides the error. */
      const open = async (uri: string, code: string, why: string): Promise<Hypervisor> => {
        try {
          const h = await UnraidHypervisor.connect(uri);
          opened.push(h);
          return h;
        } catch (err) {
          throw new VesperError(code, `failover of ${vm}: ${why}: ${(err as Error).message}`);
        }
      };
      try {
        const standby = await open(standbyUri, ErrorCode.ACTION_FAILED, `standby ${standbyUri} unreachable, nothing fenced`);
        const primary = await open(
          primaryUri,
          ErrorCode.PRIMARY_UNREACHABLE,
          `the primary's libvirt (${primaryUri}) cannot be reached, so ${vm} cannot be fenced or confirmed stopped; nothing started (a host failure is for Pacemaker and its STONITH)`,
        );
        const r = await failover({
          vm,
          primary,
          standby,
          standbyName: o.standbyName,
          lock: new FenceLock(lockDir),
          owner: `${hostname()}/${process.pid}/cli`,
          confirmTimeoutMs,
          requireLockManager: c?.actions.requireLockManager ?? true,
        }).catch((err: unknown) => {
          if (o.output === 'json' && err instanceof FailoverError) process.stdout.write(`${JSON.stringify(failedJson(err))}\n`);
          throw err;
        });
        process.stdout.write(o.output === 'json' ? `${JSON.stringify(r)}\n` : resultText(r, standbyUri));
      } finally {
        for (const h of opened) await h.close();
      }
    });
}

function resultText(r: FailoverResult, standbyUri: string): string {
  const t0 = r.steps[0]?.atMs ?? 0;
  const lines = [
    `${r.vm}: ${r.destroyed ? 'fenced' : 'already shut off'} on the primary, started as ${r.standbyName} on ${standbyUri} (fencing token ${r.fence})`,
    ...r.steps.map((s) => `  ${s.step.padEnd(10)} +${s.atMs - t0} ms`),
  ];
  if (r.guard) lines.push(`  guard: the standby refused a second copy (${r.guard.refusal})`);
  else lines.push('  guard: not checked (actions.require_lock_manager: false)');
  return `${lines.join('\n')}\n`;
}

function failedJson(err: FailoverError): Record<string, unknown> {
  return { error: { code: err.code, message: err.message }, steps: err.steps };
}
