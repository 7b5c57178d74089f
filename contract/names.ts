// What a plugin, event, parameter or action may be called, and what a VM name may hold. One
// rule for the registry, the filter table and the CLI, so a name accepted in one place is never
// refused in another. '*' is never a name: it is the filter's wildcard. The channel checks
// the probe names a guest announces against the same rules and the host's own plugin names.

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/;
// libvirt domain names are free text in practice; we refuse only what would break a one-line
// display or a rule (control characters, the wildcard).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Plugin, event, parameter and action names: a letter or digit, then letters, digits, _ . : - */
export function isName(s: string): boolean {
  return NAME.test(s);
}

/** A VM name as a key: '' is the host itself; '*' and control characters are refused. */
export function isVmName(s: string): boolean {
  return s !== '*' && !CONTROL.test(s);
}

/** Why `s` is not a name, for an error message, or '' if it is one. */
export function nameProblem(what: string, s: string): string {
  if (s === '') return `${what} is empty`;
  if (s === '*') return `${what} may not be '*': that is the wildcard`;
  if (s.includes('*')) return `${what} ${JSON.stringify(s)} contains '*': the wildcard stands alone, there are no patterns`;
  if (!NAME.test(s)) return `${what} ${JSON.stringify(s)} is not a name (a letter or digit, then letters, digits, _ . : -)`;
  return '';
}

/** How messages name a VM key: '' is the host. */
export function vmLabel(vm: string): string {
  return vm === '' ? 'the host' : `vm ${JSON.stringify(vm)}`;
}

/** The host's own plugins (host/notify/host-plugins.ts) and the two names of its bookkeeping. */
export const HOST_PLUGIN = {
  libvirt: 'libvirt',
  channel: 'channel',
  pacemaker: 'pacemaker',
  /** the outcome of a filter's action */
  action: 'action',
  /** the agent's own records: loss, probe faults */
  agent: 'agent',
} as const;

/**
 * Plugin names of the host's own events (and `agent`, the agent's own records): a guest's probe
 * is never called so, or a guest could make its records pass for libvirt's crash or the
 * channel's agent-lost, and set off what filters do on those.
 */
export const HOST_PLUGIN_NAMES: ReadonlySet<string> = new Set(Object.values(HOST_PLUGIN));
