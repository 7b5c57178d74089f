// The action language of filters: an action name and its arguments, as the filter table holds
// them (`exec PATH [ARG...]`, `restart`, `failover --standby-uri URI [--standby-name NAME]`,
// `pacemaker-fail [--resource RSC] [--node NODE]`, `pacemaker-attr [--name A] [--value V] [--node NODE]`).
// Parsed strictly, in one place, so the config loader refuses at start-up what the runner would
// refuse at the worst moment.
import { ErrorCode, VesperError } from '../../proto/errors.js';

export type ParsedAction =
  | { kind: 'exec'; command: string; args: string[] }
  | { kind: 'restart' }
  | { kind: 'failover'; standbyUri?: string; standbyName?: string }
  | { kind: 'pacemaker-fail'; resource?: string; node?: string }
  | { kind: 'pacemaker-attr'; name?: string; value?: string; node?: string };

export const ACTION_NAMES = ['exec', 'restart', 'failover', 'pacemaker-fail', 'pacemaker-attr'] as const;

export const ACTION_USAGE: Record<(typeof ACTION_NAMES)[number], string> = {
  exec: 'exec PATH [ARG...]',
  restart: 'restart',
  failover: 'failover [--standby-uri URI] [--standby-name NAME]',
  'pacemaker-fail': 'pacemaker-fail [--resource RSC] [--node NODE]',
  'pacemaker-attr': 'pacemaker-attr [--name ATTR] [--value VALUE] [--node NODE]',
};

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const LIBVIRT_URI = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/\S*$/;
// Pacemaker's ids are XML ids (a letter or '_' first); ':' for a clone's instance (vm-web1:0).
// Node names are host names, which may start with a digit. Attribute names may start with '#'
// (Pacemaker's own #health-* attributes). None may start with '-': the tools would take it
// for an option.
const PCMK_RESOURCE = /^[A-Za-z_][A-Za-z0-9_.:-]*$/;
const PCMK_NODE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const PCMK_ATTRIBUTE = /^[A-Za-z0-9_#][A-Za-z0-9_.:#-]*$/;
const PCMK_NAME_MAX = 255;
const PCMK_VALUE_MAX = 1024;

export const PACEMAKER_RESOURCE_HINT = "letters, digits, '_', '.', ':', '-'; a letter or '_' first";
export const PACEMAKER_NODE_HINT = "letters, digits, '_', '.', '-'; not '-' first";
export const PACEMAKER_ATTRIBUTE_HINT = "letters, digits, '_', '.', ':', '#', '-'; not '-' first";

/** Whether a string may be given to Pacemaker's tools as a resource id. */
export function isPacemakerResource(s: string): boolean {
  return s.length <= PCMK_NAME_MAX && PCMK_RESOURCE.test(s);
}

/** Whether a string may be given to Pacemaker's tools as a node name. */
export function isPacemakerNode(s: string): boolean {
  return s.length <= PCMK_NAME_MAX && PCMK_NODE.test(s);
}

/** Whether a string may be given to Pacemaker's tools as a node attribute name. */
export function isPacemakerAttribute(s: string): boolean {
  return s.length <= PCMK_NAME_MAX && PCMK_ATTRIBUTE.test(s);
}

/** Parses an action; throws VSP_ACTION_FAILED saying what is wrong and what is allowed. */
export function parseAction(action: string, args: readonly string[]): ParsedAction {
  const bad = (msg: string): VesperError => new VesperError(ErrorCode.ACTION_FAILED, msg);
  for (const a of args) if (a.includes('\u0000')) throw bad(`${action}: an argument contains a NUL byte`);
  switch (action) {
    case 'exec': {
      const [command, ...rest] = args;
      if (command === undefined || command === '') throw bad(`exec needs the program to run: ${ACTION_USAGE.exec}`);
      if (CONTROL.test(command)) throw bad('exec: the program path contains control characters');
      if (command.includes('/') && !command.startsWith('/'))
        throw bad(`exec: ${JSON.stringify(command)} is a relative path; give an absolute path (or a bare name looked up in PATH)`);
      return { kind: 'exec', command, args: rest };
    }
    case 'restart':
      if (args.length) throw bad(`restart takes no arguments, got ${JSON.stringify(args)}`);
      return { kind: 'restart' };
    case 'failover':
      return parseFailover(args, bad);
    case 'pacemaker-fail': {
      const o = parseOptions('pacemaker-fail', args, ['--resource', '--node'], bad);
      const out: { kind: 'pacemaker-fail'; resource?: string; node?: string } = { kind: 'pacemaker-fail' };
      if (o['--resource'] !== undefined) out.resource = pacemakerResource('pacemaker-fail', o['--resource'], bad);
      if (o['--node'] !== undefined) out.node = pacemakerNode('pacemaker-fail', o['--node'], bad);
      return out;
    }
    case 'pacemaker-attr': {
      const o = parseOptions('pacemaker-attr', args, ['--name', '--value', '--node'], bad);
      const out: { kind: 'pacemaker-attr'; name?: string; value?: string; node?: string } = { kind: 'pacemaker-attr' };
      const name = o['--name'];
      if (name !== undefined) {
        if (!isPacemakerAttribute(name))
          throw bad(`pacemaker-attr: --name ${JSON.stringify(name)} is not a node attribute name (${PACEMAKER_ATTRIBUTE_HINT})`);
        out.name = name;
      }
      const value = o['--value'];
      if (value !== undefined) {
        if (value === '') throw bad('pacemaker-attr: --value is empty (to remove the attribute: attrd_updater -n NAME -D)');
        if (CONTROL.test(value) || value.length > PCMK_VALUE_MAX)
          throw bad(`pacemaker-attr: --value must be at most ${PCMK_VALUE_MAX} characters without control characters`);
        out.value = value;
      }
      if (o['--node'] !== undefined) out.node = pacemakerNode('pacemaker-attr', o['--node'], bad);
      return out;
    }
    default:
      throw bad(`unknown action ${JSON.stringify(action)} (actions: ${ACTION_NAMES.map((n) => ACTION_USAGE[n]).join(' | ')})`);
  }
}

function parseFailover(args: readonly string[], bad: (msg: string) => VesperError): ParsedAction {
  const o = parseOptions('failover', args, ['--standby-uri', '--standby-name'], bad);
  const out: { kind: 'failover'; standbyUri?: string; standbyName?: string } = { kind: 'failover' };
  const uri = o['--standby-uri'];
  if (uri !== undefined) {
    if (!LIBVIRT_URI.test(uri))
      throw bad(`failover: --standby-uri ${JSON.stringify(uri)} is not a libvirt URI (like qemu+ssh://host/system)`);
    out.standbyUri = uri;
  }
  const name = o['--standby-name'];
  if (name !== undefined) {
    if (name === '' || CONTROL.test(name) || name.includes('/'))
      throw bad(`failover: --standby-name ${JSON.stringify(name)} is not a domain name (no '/', no control characters)`);
    out.standbyName = name;
  }
  return out;
}

/**
 * An action's `--flag VALUE` / `--flag=VALUE` options, each at most once, no other words. A
 * value may not start with `--` when given as the next word: `--standby-uri --standby-name x`
 * is a missing value, not a URI.
 */
function parseOptions<F extends string>(
  action: keyof typeof ACTION_USAGE,
  args: readonly string[],
  flags: readonly F[],
  bad: (msg: string) => VesperError,
): Partial<Record<F, string>> {
  const out: Partial<Record<F, string>> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    let value: string | undefined;
    if (flag !== arg) value = arg.slice(eq + 1);
    if (!(flags as readonly string[]).includes(flag))
      throw bad(
        `${action}: unexpected ${flag.startsWith('-') ? 'option' : 'argument'} ${JSON.stringify(arg)} (usage: ${ACTION_USAGE[action]})`,
      );
    if (value === undefined) {
      value = args[i + 1];
      if (value === undefined || value.startsWith('--')) throw bad(`${action}: ${flag} needs a value`);
      i++;
    }
    if (out[flag as F] !== undefined) throw bad(`${action}: ${flag} given twice`);
    out[flag as F] = value;
  }
  return out;
}

function pacemakerResource(action: string, s: string, bad: (msg: string) => VesperError): string {
  if (!isPacemakerResource(s))
    throw bad(`${action}: --resource ${JSON.stringify(s)} is not a Pacemaker resource id (${PACEMAKER_RESOURCE_HINT})`);
  return s;
}

function pacemakerNode(action: string, s: string, bad: (msg: string) => VesperError): string {
  if (!isPacemakerNode(s)) throw bad(`${action}: --node ${JSON.stringify(s)} is not a Pacemaker node name (${PACEMAKER_NODE_HINT})`);
  return s;
}

/**
 * Why an action can never run for the events a filter rule matches (its vm: a name, '' for
 * the host, '*'), or null. `mapped(vm)`: whether the config gives that VM a Pacemaker resource.
 * A rule for '*' may still meet an unmapped VM: the runner reports that (VSP_PACEMAKER_MAPPING).
 */
export function actionProblemForVm(p: ParsedAction, vm: string, mapped: (vm: string) => boolean): string | null {
  if (p.kind !== 'pacemaker-fail') return null;
  if (vm === '') return "pacemaker-fail needs a VM; a rule for the host ('') cannot use it (pacemaker-attr can)";
  if (vm !== '*' && p.resource === undefined && !mapped(vm))
    return `pacemaker-fail needs the resource of ${vm}: --resource RSC in args, or pacemaker.vms.${vm}.resource in the config`;
  return null;
}

/** Whether a string is a libvirt connection URI (scheme://...). */
export function isLibvirtUri(s: string): boolean {
  return LIBVIRT_URI.test(s);
}
