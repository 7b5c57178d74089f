// What the API refuses before it stores anything: filter rules no plugin could ever match,
// probe parameter values the probe would refuse when it loads. Refused at `vesper filter set` /
// `vesper param set` / `vesper attach`, with the known names in the message, instead of being
// accepted and then never matching (or breaking the probe's next push).
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { SIGNALS, signalNumber } from '../../contract/signals.js';
import { WILDCARD } from '../notify/filter.js';

/** A plugin a filter may name: its name and its events. */
export interface KnownPlugin {
  name: string;
  /** null: events not named in advance (the agent's own records) */
  events: readonly string[] | null;
}

/**
 * Throws VSP_FILTER_INVALID when a rule's plugin or event could match no event of any known
 * plugin. '*' alone is the wildcard; a key such as 'sig*' is matched literally (filter.ts), so
 * it is refused with that said.
 */
export function checkFilterKey(plugin: string, event: string, known: readonly KnownPlugin[]): void {
  const names = known.map((p) => p.name).sort();
  const globHint = (w: string): string =>
    /[*?[]/.test(w) && w !== WILDCARD ? ` ('*' alone is the wildcard; ${JSON.stringify(w)} is not a pattern)` : '';
  const candidates = plugin === WILDCARD ? known : known.filter((p) => p.name === plugin);
  if (!candidates.length)
    throw new VesperError(
      ErrorCode.FILTER_INVALID,
      `no probe or host plugin is called ${JSON.stringify(plugin)}${globHint(plugin)}; known: ${names.join(', ')}`,
    );
  if (event === WILDCARD) return;
  if (candidates.some((p) => p.events === null || p.events.includes(event))) return;
  const events = [...new Set(candidates.flatMap((p) => p.events ?? []))].sort();
  throw new VesperError(
    ErrorCode.FILTER_INVALID,
    plugin === WILDCARD
      ? `no plugin has an event ${JSON.stringify(event)}${globHint(event)}; known events: ${events.join(', ')}`
      : `${plugin} has no event ${JSON.stringify(event)}${globHint(event)}; its events: ${events.join(', ')}`,
  );
}

/** Parameters whose values the probe checks itself when it loads, checked here the same way. */
const VALUE_CHECKS: Record<string, (value: string) => void> = {
  'signal.signals': signalList,
};

function signalList(value: string): void {
  const bad: string[] = [];
  for (const s of value.split(',')) {
    if (!s.trim()) continue;
    try {
      signalNumber(s);
    } catch {
      bad.push(s.trim());
    }
  }
  if (bad.length)
    throw new Error(
      `unknown signal${bad.length === 1 ? '' : 's'} ${bad.join(', ')} (known: ${Object.keys(SIGNALS).join(', ')}, or a number 1-64)`,
    );
}

/** Throws VSP_PROBE_BAD_PARAM when the probe would refuse this value. */
export function checkProbeParamValue(probe: string, name: string, value: string): void {
  const check = VALUE_CHECKS[`${probe}.${name}`];
  if (!check) return;
  try {
    check(value);
  } catch (err) {
    throw new VesperError(ErrorCode.PROBE_BAD_PARAM, `${probe} ${name}: ${(err as Error).message}`);
  }
}

/**
 * Why probes attached to a VM without a link are not loaded, and what would change that: a
 * VM that runs but has neither the vesper channel nor an SSH target will never get them.
 */
export function notPushedReason(vm: string, state: string, channel: string): string {
  const running = state === 'running' || state === 'paused' || state === 'idle';
  if (!running) return `remembered; pushed when ${vm} runs and its agent answers (${vm} is ${state || 'not running'})`;
  return (
    `remembered, but not pushed: ${vm} has neither the vesper channel nor an SSH target. ` +
    `Add a virtio-serial channel named ${channel} to the domain (virsh attach-device ${vm} FILE --live --config, ` +
    `a <channel type='unix'> with <target type='virtio' name='${channel}'/>), ` +
    `or name an SSH target for ${vm} under ssh.targets in vesperd's config and run: vesper agent install ${vm}`
  );
}
