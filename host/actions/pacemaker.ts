// The `pacemaker-fail` and `pacemaker-attr` actions: vesper tells Pacemaker what it saw, and
// Pacemaker, which owns the VM as a resource, does the recovery.
//
//   pacemaker-fail   crm_resource --fail -r RSC -N NODE: the resource's operation failed;
//                    Pacemaker recovers it at once (stop, start here or elsewhere) and counts
//                    the failure (one call adds 2 to the fail-count).
//   pacemaker-attr   attrd_updater -n ATTR -U VALUE -N NODE: a node attribute a location rule
//                    acts on (`rule -INFINITY: vesper-health eq 0` moves everything away).
//
// The resource comes from the action's --resource or the config's VM → resource mapping; the
// node from --node, the VM's mapping, the config's pacemaker.node, or `crm_node -n` (asked once,
// then kept: this host's node name does not change while vesperd runs). The tools run without
// a shell, with a timeout, in the C locale so that their messages can be told apart: a tool
// that is not installed or a cluster that does not answer is VSP_PACEMAKER_UNAVAILABLE, a
// resource or node Pacemaker does not know is VSP_PACEMAKER_MAPPING.
import { spawn } from 'node:child_process';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { silentLog, type ActionLog } from './log.js';

export interface PacemakerVm {
  resource: string;
  node?: string;
}

export interface PacemakerSettings {
  /** VM (libvirt domain name) → its Pacemaker resource, and the node it runs on here */
  vms: Readonly<Record<string, PacemakerVm>>;
  /** this host's Pacemaker node name; undefined: ask `crm_node -n` */
  node?: string;
  /** pacemaker-attr's attribute when the action names none */
  healthAttribute: string;
  /** how long one tool run may take */
  toolsTimeoutMs: number;
}

export const DEFAULT_HEALTH_ATTRIBUTE = 'vesper-health';
/** pacemaker-attr's value when the action gives none: "unhealthy" for `rule -INFINITY: vesper-health eq 0`. */
export const DEFAULT_HEALTH_VALUE = '0';
export const DEFAULT_TOOLS_TIMEOUT_MS = 10_000;

export const DEFAULT_PACEMAKER_SETTINGS: PacemakerSettings = {
  vms: {},
  healthAttribute: DEFAULT_HEALTH_ATTRIBUTE,
  toolsTimeoutMs: DEFAULT_TOOLS_TIMEOUT_MS,
};

export interface ToolResult {
  /** the whole command line, program first */
  command: string[];
  /** the exit status, or null when a signal ended it (or it never started) */
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** the program was not found (ENOENT) or could not be run (EACCES) */
  notInstalled: boolean;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface PacemakerOutcome {
  /** null: Pacemaker took it */
  error: VesperError | null;
  /** what was run and what it said, for the action's result */
  detail: Record<string, unknown>;
}

/** Pacemaker's own exit statuses (crm_exit_t) that say something about the cause. */
const CRM_EX_UNAVAILABLE = 69;
const CRM_EX_DISCONNECT = 102;
const CRM_EX_NOSUCH = 105;

const OUTPUT_MAX = 4096;
const KILL_GRACE_MS = 1000;
/** After SIGKILL, how long to wait for the exit before giving up on it (a process stuck in D state). */
const KILL_WAIT_MS = 2000;

// The CIB, controller or attrd not answering, or the named node not in the cluster right now.
const UNREACHABLE = /could not connect|connection refused|not connected|transport endpoint|is not online/i;
// "Resource 'vm-x' not found", "Node 'n9' not found"; not a shell's "sleep: not found".
const UNKNOWN_NAME = /\b(resource|node)\b[^\n]*\b(not found|does not exist)/i;

export class PacemakerActions {
  private localNode: Promise<{ node: string; lookup: ToolResult }> | null = null;

  constructor(
    readonly settings: PacemakerSettings = DEFAULT_PACEMAKER_SETTINGS,
    private readonly log: ActionLog = silentLog,
  ) {}

  /** The resource the config gives a VM, if any. */
  resourceOf(vm: string): string | undefined {
    return Object.hasOwn(this.settings.vms, vm) ? this.settings.vms[vm]!.resource : undefined;
  }

  /** pacemaker-fail: tells Pacemaker that the VM's resource failed on its node. */
  async fail(vm: string, o: { resource?: string; node?: string }): Promise<PacemakerOutcome> {
    const what = `pacemaker-fail of ${vm}`;
    const resource = o.resource ?? this.resourceOf(vm);
    if (resource === undefined)
      return {
        error: new VesperError(ErrorCode.PACEMAKER_MAPPING, noResourceMessage(vm)),
        detail: {},
      };
    const where = await this.nodeFor(vm, o.node, what);
    if ('error' in where) return { error: where.error, detail: { resource, ...where.detail } };
    const r = await runTool('crm_resource', ['--fail', '-r', resource, '-N', where.node], this.settings.toolsTimeoutMs);
    const detail = { resource, node: where.node, nodeFrom: where.from, ...toolDetail(r), ...where.detail };
    if (r.exitCode === 0) return { error: null, detail };
    return { error: toolError(what, r, { resource, node: where.node, vm }), detail };
  }

  /** pacemaker-attr: sets a node attribute (default: the health attribute to "0", unhealthy). */
  async setAttribute(vm: string, o: { name?: string; value?: string; node?: string }): Promise<PacemakerOutcome> {
    const name = o.name ?? this.settings.healthAttribute;
    const value = o.value ?? DEFAULT_HEALTH_VALUE;
    const what = `pacemaker-attr ${name}=${value}${vm ? ` for ${vm}` : ''}`;
    const where = await this.nodeFor(vm, o.node, what);
    if ('error' in where) return { error: where.error, detail: { name, value, ...where.detail } };
    const r = await runTool('attrd_updater', ['-n', name, '-U', value, '-N', where.node], this.settings.toolsTimeoutMs);
    const detail = { name, value, node: where.node, nodeFrom: where.from, ...toolDetail(r), ...where.detail };
    if (r.exitCode === 0) return { error: null, detail };
    return { error: toolError(what, r, { node: where.node, vm }), detail };
  }

  /** The node to name: the action's, the VM's mapping's, the config's, or this host's as Pacemaker says. */
  private async nodeFor(
    vm: string,
    given: string | undefined,
    what: string,
  ): Promise<
    | { node: string; from: 'action' | 'mapping' | 'config' | 'crm_node'; detail: Record<string, unknown> }
    | { error: VesperError; detail: Record<string, unknown> }
  > {
    if (given !== undefined) return { node: given, from: 'action', detail: {} };
    const mapped = vm && Object.hasOwn(this.settings.vms, vm) ? this.settings.vms[vm]!.node : undefined;
    if (mapped !== undefined) return { node: mapped, from: 'mapping', detail: {} };
    if (this.settings.node !== undefined) return { node: this.settings.node, from: 'config', detail: {} };
    let looked: { node: string; lookup: ToolResult };
    try {
      looked = await this.askLocalNode();
    } catch (err) {
      const lookup = (err as { lookup?: ToolResult }).lookup;
      const cause = VesperError.from(err, ErrorCode.PACEMAKER_UNAVAILABLE);
      return {
        error: new VesperError(cause.code, `${what}: ${cause.message}`, cause.detail),
        detail: lookup ? { nodeLookup: toolDetail(lookup) } : {},
      };
    }
    return { node: looked.node, from: 'crm_node', detail: { nodeLookup: toolDetail(looked.lookup) } };
  }

  /** `crm_node -n`, once; a failure is not kept, so a cluster that comes up later is asked again. */
  private askLocalNode(): Promise<{ node: string; lookup: ToolResult }> {
    if (!this.localNode) {
      const p = runTool('crm_node', ['-n'], this.settings.toolsTimeoutMs).then((lookup) => {
        const node = lookup.stdout.trim().split('\n')[0]?.trim() ?? '';
        if (lookup.exitCode === 0 && node !== '') {
          this.log.info({ node }, "this host's Pacemaker node name");
          return { node, lookup };
        }
        const how = lookup.exitCode === 0 ? 'crm_node -n printed no node name' : toolFailureText(lookup);
        throw Object.assign(
          new VesperError(
            ErrorCode.PACEMAKER_UNAVAILABLE,
            `cannot learn this host's Pacemaker node name (${how}); is the cluster running here? ` +
              'Or name the node: --node NODE, pacemaker.vms.VM.node or pacemaker.node in the config',
          ),
          { lookup },
        );
      });
      this.localNode = p;
      p.catch(() => {
        if (this.localNode === p) this.localNode = null;
      });
    }
    return this.localNode;
  }
}

/** What to say when neither the action nor the config names a VM's resource. */
export function noResourceMessage(vm: string): string {
  return `no Pacemaker resource known for ${vm}: add pacemaker.vms.${vm}.resource to the config, or --resource RSC to the action`;
}

/** The error for a tool run that did not exit 0: which code, and a message with what the tool said. */
export function toolError(what: string, r: ToolResult, names: { resource?: string; node: string; vm: string }): VesperError {
  const program = r.command[0] ?? 'the tool';
  const said = toolFailureText(r);
  if (r.notInstalled)
    return new VesperError(
      ErrorCode.PACEMAKER_UNAVAILABLE,
      `${what}: ${program} is not installed here (${said}); Pacemaker's command-line tools are needed (Debian: pacemaker-cli-utils)`,
    );
  if (r.timedOut)
    return new VesperError(
      ErrorCode.ACTION_FAILED,
      `${what}: ${program} did not finish in time and was stopped after ${Math.round(r.durationMs)} ms; whether Pacemaker took it is unknown`,
    );
  const stderr = r.stderr.trim();
  if (r.exitCode === CRM_EX_NOSUCH || (r.exitCode !== CRM_EX_DISCONNECT && UNKNOWN_NAME.test(stderr))) {
    const subject = names.resource !== undefined ? `resource ${names.resource} on node ${names.node}` : `node ${names.node}`;
    return new VesperError(
      ErrorCode.PACEMAKER_MAPPING,
      `${what}: Pacemaker does not know ${subject} (${said}); check pacemaker.vms.${names.vm || 'VM'} in the config or the action's arguments`,
    );
  }
  if (r.exitCode === CRM_EX_DISCONNECT || r.exitCode === CRM_EX_UNAVAILABLE || UNREACHABLE.test(stderr))
    return new VesperError(ErrorCode.PACEMAKER_UNAVAILABLE, `${what}: the cluster does not answer here (${said}); is Pacemaker running?`);
  return new VesperError(ErrorCode.ACTION_FAILED, `${what}: ${said}`);
}

/** "crm_resource exited with status 102: Could not connect to the CIB: ..." */
function toolFailureText(r: ToolResult): string {
  const program = r.command[0] ?? 'the tool';
  if (r.notInstalled) return `${program}: ${r.stderr.trim() || 'not found in PATH'}`;
  if (r.timedOut) return `${program} timed out (stopped after ${Math.round(r.durationMs)} ms)`;
  const how = r.signal ? `${program} was killed by ${r.signal}` : `${program} exited with status ${r.exitCode}`;
  const firstLines = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(0, 3).join(' / ');
  return firstLines ? `${how}: ${firstLines}` : how;
}

function toolDetail(r: ToolResult): Record<string, unknown> {
  return {
    command: r.command,
    exitCode: r.exitCode,
    signal: r.signal,
    timedOut: r.timedOut,
    stdout: r.stdout,
    stderr: r.stderr,
    toolDurationMs: r.durationMs,
  };
}

/**
 * Runs one of Pacemaker's tools: no shell, stdin closed, C locale, the first 4 KiB of each
 * output. On the timeout SIGTERM, then SIGKILL a second later. Never rejects: a program that
 * cannot be started is a result with notInstalled set.
 */
export function runTool(program: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  const command = [program, ...args];
  const started = performance.now();
  const elapsed = (): number => Math.round((performance.now() - started) * 1000) / 1000;
  return new Promise<ToolResult>((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];
    const finish = (r: Omit<ToolResult, 'command' | 'stdout' | 'stderr' | 'durationMs' | 'timedOut'>): void => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      resolve({ command, ...r, timedOut, stdout, stderr, durationMs: elapsed() });
    };
    // The locale matters: the messages are matched to tell "not running" from "no such resource".
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C', LANG: 'C' } });
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (c: string) => {
      if (stdout.length < OUTPUT_MAX) stdout = (stdout + c).slice(0, OUTPUT_MAX);
    });
    child.stderr.on('data', (c: string) => {
      if (stderr.length < OUTPUT_MAX) stderr = (stderr + c).slice(0, OUTPUT_MAX);
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (child.pid !== undefined) return; // a failed kill; 'close' still comes
      stderr = err.code === 'ENOENT' ? 'not found in PATH' : err.message;
      finish({ exitCode: null, signal: null, notInstalled: err.code === 'ENOENT' || err.code === 'EACCES' });
    });
    child.on('close', (code, signal) => finish({ exitCode: code, signal, notInstalled: false }));
    timers.push(
      setTimeout(() => {
        timedOut = true;
        child.kill('SIGTERM');
        timers.push(
          setTimeout(() => {
            child.kill('SIGKILL');
            timers.push(setTimeout(() => finish({ exitCode: null, signal: 'SIGKILL', notInstalled: false }), KILL_WAIT_MS));
          }, KILL_GRACE_MS),
        );
      }, timeoutMs),
    );
  });
}
