// The filter table: for each event, notify, discard, or run an action. A rule is keyed by
// (vm, plugin, instance, event), any of which may be the wildcard '*'; its value is the decision.
//
// Precedence: the most specific matching rule wins. Specificity is the tuple of "is exact"
// flags (vm, plugin, instance, event), compared lexicographically: an exact vm outranks an exact
// plugin, which outranks an exact instance, which outranks an exact event. So
//
//   vm1 * * *              beats  * signal 0 signal   (exact vm first)
//   * signal * *           beats  * * 0 signal        (then exact plugin)
//   * * 0 *                beats  * * * signal        (then exact instance)
//   * * * signal           beats  * * * *             (then exact event)
//
// Two rules matching the same event with the same flags would have the same key, and a key holds
// one rule (set() replaces), so there are never ties. With no matching rule the event is notified.
//
// decide() is on the ingest path. Its answer for a (vm, plugin, event, instance) is cached in
// nested maps (no key string built per event); any change to the rules drops the cache. On a miss
// only the specificity masks that have rules are tried, most specific first. The cache is bounded
// (events carry guest-influenced names), and starts over when full.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from './event.js';
import { isVmName, nameProblem } from '../../contract/names.js';

export const WILDCARD = '*';

export type FilterDecision = { kind: 'notify' } | { kind: 'discard' } | { kind: 'action'; action: string; args: string[] };

export interface FilterKey {
  /** libvirt domain name, '' for the host itself, or '*' */
  vm: string;
  plugin: string;
  instance: number | '*';
  event: string;
}

export interface FilterRule extends FilterKey {
  decision: FilterDecision;
}

/** What decide() answers: the decision and the rule it came from (null: no rule matched). */
export interface FilterVerdict {
  readonly decision: Readonly<FilterDecision>;
  readonly rule: Readonly<FilterRule> | null;
}

export type FilterSubject = Pick<VesperEvent, 'vm' | 'plugin' | 'instance' | 'event'>;

// Specificity bits, most significant first, so that comparing masks as numbers is comparing
// the flag tuples lexicographically.
const VM = 8;
const PLUGIN = 4;
const INSTANCE = 2;
const EVENT = 1;

/** The rule's specificity as a number 0..15: higher wins (bits vm, plugin, instance, event). */
export function specificity(key: FilterKey): number {
  return (
    (key.vm === WILDCARD ? 0 : VM) |
    (key.plugin === WILDCARD ? 0 : PLUGIN) |
    (key.instance === WILDCARD ? 0 : INSTANCE) |
    (key.event === WILDCARD ? 0 : EVENT)
  );
}

const NOTIFY: FilterDecision = Object.freeze({ kind: 'notify' });
const NO_RULE: FilterVerdict = Object.freeze({ decision: NOTIFY, rule: null });

/** Default upper bound on cached (vm, plugin, event, instance) answers. */
export const DEFAULT_CACHE_LIMIT = 100_000;

type Cache = Map<string, Map<string, Map<string, Map<number, FilterVerdict>>>>;

export class FilterTable {
  // key string -> verdict (which holds the frozen rule); no rule field may hold NUL, so the
  // key is unambiguous
  private readonly rules = new Map<string, FilterVerdict>();
  private readonly perMask = new Uint32Array(16);
  /** masks that have at least one rule, most specific first */
  private masks: number[] = [];
  private cache: Cache = new Map();
  private cached = 0;
  private readonly cacheLimit: number;
  /** answers computed from the rules rather than found in the cache (for tests and stats) */
  misses = 0;

  constructor(opts: { cacheLimit?: number } = {}) {
    this.cacheLimit = opts.cacheLimit ?? DEFAULT_CACHE_LIMIT;
  }

  /** Adds a rule, replacing the rule with the same key; returns the replaced one. */
  set(rule: FilterRule): Readonly<FilterRule> | undefined {
    const r = checkRule(rule);
    const key = keyOf(r.vm, r.plugin, r.instance, r.event);
    const before = this.rules.get(key);
    this.rules.set(key, Object.freeze({ decision: r.decision, rule: r }));
    if (!before) this.perMask[specificity(r)]!++;
    this.changed();
    return before?.rule ?? undefined;
  }

  /** Removes the rule with exactly this key (wildcards are matched literally), or every rule; returns how many. */
  clear(key?: FilterKey): number {
    if (key === undefined) {
      const n = this.rules.size;
      this.rules.clear();
      this.perMask.fill(0);
      this.changed();
      return n;
    }
    if (!this.rules.delete(keyOf(key.vm, key.plugin, key.instance, key.event))) return 0;
    this.perMask[specificity(key)]!--;
    this.changed();
    return 1;
  }

  /** The rules, most specific first (the order in which they are tried), then by key. */
  list(): Readonly<FilterRule>[] {
    const out: Readonly<FilterRule>[] = [];
    for (const v of this.rules.values()) out.push(v.rule!);
    return out.sort((a, b) => specificity(b) - specificity(a) || compareKeys(a, b));
  }

  get size(): number {
    return this.rules.size;
  }

  /** answers held in the cache (at most the cache limit) */
  get cacheSize(): number {
    return this.cached;
  }

  /** The decision for an event: the most specific matching rule's, else notify. */
  decide(ev: FilterSubject): FilterVerdict {
    if (this.masks.length === 0) return NO_RULE;
    let slots = this.slots(ev);
    let v = slots.get(ev.instance);
    if (v === undefined) {
      v = this.compute(ev);
      if (this.cached >= this.cacheLimit) {
        this.cache = new Map();
        this.cached = 0;
        slots = this.slots(ev);
      }
      slots.set(ev.instance, v);
      this.cached++;
    }
    return v;
  }

  /** The cache's answers for (vm, plugin, event), by instance. */
  private slots(ev: FilterSubject): Map<number, FilterVerdict> {
    let byPlugin = this.cache.get(ev.vm);
    if (byPlugin === undefined) this.cache.set(ev.vm, (byPlugin = new Map<string, Map<string, Map<number, FilterVerdict>>>()));
    let byEvent = byPlugin.get(ev.plugin);
    if (byEvent === undefined) byPlugin.set(ev.plugin, (byEvent = new Map<string, Map<number, FilterVerdict>>()));
    let byInstance = byEvent.get(ev.event);
    if (byInstance === undefined) byEvent.set(ev.event, (byInstance = new Map<number, FilterVerdict>()));
    return byInstance;
  }

  private compute(ev: FilterSubject): FilterVerdict {
    this.misses++;
    // An event whose field is literally '*' (never a valid name) must not pass for an exact match.
    const exactOk =
      (ev.vm === WILDCARD ? 0 : VM) |
      (ev.plugin === WILDCARD ? 0 : PLUGIN) |
      (Number.isInteger(ev.instance) ? INSTANCE : 0) |
      (ev.event === WILDCARD ? 0 : EVENT);
    for (const m of this.masks) {
      if ((m & exactOk) !== m) continue;
      const v = this.rules.get(
        keyOf(
          m & VM ? ev.vm : WILDCARD,
          m & PLUGIN ? ev.plugin : WILDCARD,
          m & INSTANCE ? ev.instance : WILDCARD,
          m & EVENT ? ev.event : WILDCARD,
        ),
      );
      if (v !== undefined) return v;
    }
    return NO_RULE;
  }

  private changed(): void {
    const masks: number[] = [];
    for (let m = 15; m >= 0; m--) if (this.perMask[m]! > 0) masks.push(m);
    this.masks = masks;
    this.cache = new Map();
    this.cached = 0;
  }
}

function keyOf(vm: string, plugin: string, instance: number | '*', event: string): string {
  return `${vm}\u0000${plugin}\u0000${instance}\u0000${event}`;
}

function compareKeys(a: FilterKey, b: FilterKey): number {
  return (
    cmp(a.vm, b.vm) ||
    cmp(a.plugin, b.plugin) ||
    (a.instance === b.instance ? 0 : a.instance === WILDCARD ? 1 : b.instance === WILDCARD ? -1 : a.instance - b.instance) ||
    cmp(a.event, b.event)
  );
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function invalid(message: string): VesperError {
  return new VesperError(ErrorCode.FILTER_INVALID, message);
}

/** Checks a rule and returns a frozen copy; VesperError(FILTER_INVALID) saying what is wrong. */
export function checkRule(rule: FilterRule): Readonly<FilterRule> {
  const { vm, plugin, instance, event, decision } = rule;
  if (typeof vm !== 'string' || (vm !== WILDCARD && !isVmName(vm)))
    throw invalid(`vm ${JSON.stringify(vm)} is not a VM name, '' (the host) or *`);
  const pluginWhy = plugin === WILDCARD ? '' : nameProblem('plugin', plugin);
  if (pluginWhy) throw invalid(pluginWhy);
  if (instance !== WILDCARD && !(Number.isSafeInteger(instance) && instance >= 0))
    throw invalid(`instance ${JSON.stringify(instance)} is not * or a whole number from 0`);
  const eventWhy = event === WILDCARD ? '' : nameProblem('event', event);
  if (eventWhy) throw invalid(eventWhy);
  let d: FilterDecision;
  switch (decision?.kind) {
    case 'notify':
    case 'discard':
      d = Object.freeze({ kind: decision.kind });
      break;
    case 'action': {
      const why = nameProblem('action name', decision.action);
      if (why) throw invalid(why);
      if (!Array.isArray(decision.args) || decision.args.some((a) => typeof a !== 'string'))
        throw invalid(`action ${decision.action}: arguments must be a list of strings`);
      d = Object.freeze({ kind: 'action', action: decision.action, args: Object.freeze([...decision.args]) as string[] });
      break;
    }
    default:
      throw invalid(`decision ${JSON.stringify((decision as { kind?: unknown } | undefined)?.kind)} is not notify, discard or action`);
  }
  return Object.freeze({ vm, plugin, instance, event, decision: d });
}

const USAGE = 'a filter rule is PLUGIN INSTANCE EVENT notify|discard|action NAME [ARG...]';

/**
 * Parses a rule as the CLI takes it, in the seed's order: PLUGIN INSTANCE EVENT DECISION, where
 * DECISION is `notify`, `discard` or `action NAME [ARG...]`, and '*' is the wildcard. The VM is
 * given separately ('*', the default, for every VM; '' for the host).
 */
export function parseRule(words: readonly string[], vm: string = WILDCARD): FilterRule {
  if (words.length < 4)
    throw invalid(`${USAGE}; got ${words.length} word${words.length === 1 ? '' : 's'}${words.length ? ': ' + words.join(' ') : ''}`);
  const [plugin = '', instanceWord = '', event = '', kind = '', ...rest] = words;
  if (vm !== WILDCARD && !isVmName(vm)) throw invalid(`vm ${JSON.stringify(vm)} is not a VM name`);
  const pluginWhy = plugin === WILDCARD ? '' : nameProblem('plugin', plugin);
  if (pluginWhy) throw invalid(pluginWhy);
  let instance: number | '*';
  if (instanceWord === WILDCARD) instance = WILDCARD;
  else if (/^\d{1,9}$/.test(instanceWord)) instance = Number(instanceWord);
  else throw invalid(`instance ${JSON.stringify(instanceWord)} is not * or a whole number from 0`);
  const eventWhy = event === WILDCARD ? '' : nameProblem('event', event);
  if (eventWhy) throw invalid(eventWhy);
  let decision: FilterDecision;
  if (kind === 'notify' || kind === 'discard') {
    if (rest.length > 0) throw invalid(`${kind} takes nothing after it; got ${rest.map((w) => JSON.stringify(w)).join(' ')}`);
    decision = { kind };
  } else if (kind === 'action') {
    const [action, ...args] = rest;
    if (action === undefined) throw invalid('action needs a NAME: ... action NAME [ARG...]');
    const why = nameProblem('action name', action);
    if (why) throw invalid(why);
    decision = { kind: 'action', action, args };
  } else throw invalid(`${JSON.stringify(kind)} is not notify, discard or action (${USAGE})`);
  return { vm, plugin, instance, event, decision };
}

/** The rule as parseRule takes it (without the vm). */
export function ruleWords(rule: FilterRule): string[] {
  const d = rule.decision;
  return [rule.plugin, String(rule.instance), rule.event, d.kind, ...(d.kind === 'action' ? [d.action, ...d.args] : [])];
}

/**
 * One line: the vm ('*', the name, or "" for the host), then the rule's words in parseRule's
 * order. Words that are empty or hold spaces or quotes are JSON-quoted.
 */
export function formatRule(rule: FilterRule): string {
  return [rule.vm, ...ruleWords(rule)].map(quote).join(' ');
}

function quote(w: string): string {
  return /^[^\s"'\\]+$/.test(w) ? w : JSON.stringify(w);
}
