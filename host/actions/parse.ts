// The action language of filters: an action name and its arguments, as the filter table holds
// them (`exec PATH [ARG...]`, `restart`, `failover --standby-uri URI [--standby-name NAME]`).
// Parsed strictly, in one place, so the config loader refuses at start-up what the runner would
// refuse at the worst moment.
import { ErrorCode, VesperError } from '../../proto/errors.js';

export type ParsedAction =
  { kind: 'exec'; command: string; args: string[] } | { kind: 'restart' } | { kind: 'failover'; standbyUri?: string; standbyName?: string };

export const ACTION_NAMES = ['exec', 'restart', 'failover'] as const;

export const ACTION_USAGE: Record<(typeof ACTION_NAMES)[number], string> = {
  exec: 'exec PATH [ARG...]',
  restart: 'restart',
  failover: 'failover [--standby-uri URI] [--standby-name NAME]',
};

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const LIBVIRT_URI = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/\S*$/;

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
    default:
      throw bad(`unknown action ${JSON.stringify(action)} (actions: ${ACTION_NAMES.map((n) => ACTION_USAGE[n]).join(' | ')})`);
  }
}

function parseFailover(args: readonly string[], bad: (msg: string) => VesperError): ParsedAction {
  const out: { kind: 'failover'; standbyUri?: string; standbyName?: string } = { kind: 'failover' };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    let value: string | undefined;
    if (flag !== arg) value = arg.slice(eq + 1);
    if (flag !== '--standby-uri' && flag !== '--standby-name')
      throw bad(
        `failover: unexpected ${flag.startsWith('-') ? 'option' : 'argument'} ${JSON.stringify(arg)} (usage: ${ACTION_USAGE.failover})`,
      );
    if (value === undefined) {
      value = args[i + 1];
      if (value === undefined || value.startsWith('--')) throw bad(`failover: ${flag} needs a value`);
      i++;
    }
    if (flag === '--standby-uri') {
      if (out.standbyUri !== undefined) throw bad('failover: --standby-uri given twice');
      if (!LIBVIRT_URI.test(value))
        throw bad(`failover: --standby-uri ${JSON.stringify(value)} is not a libvirt URI (like qemu+ssh://host/system)`);
      out.standbyUri = value;
    } else {
      if (out.standbyName !== undefined) throw bad('failover: --standby-name given twice');
      if (value === '' || CONTROL.test(value) || value.includes('/'))
        throw bad(`failover: --standby-name ${JSON.stringify(value)} is not a domain name (no '/', no control characters)`);
      out.standbyName = value;
    }
  }
  return out;
}

/** Whether a string is a libvirt connection URI (scheme://...). */
export function isLibvirtUri(s: string): boolean {
  return LIBVIRT_URI.test(s);
}
