import { describe, expect, it } from 'vitest';
import {
  FilterTable,
  formatRule,
  parseRule,
  ruleWords,
  specificity,
  type FilterDecision,
  type FilterRule,
  type FilterSubject,
} from '../../host/notify/filter.js';
import { ErrorCode } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';

const subject: FilterSubject = { vm: 'vm1', plugin: 'signal', instance: 2, event: 'fatal' };

const FIELDS = ['vm', 'plugin', 'instance', 'event'] as const;

/** The rule matching `subject` that is exact in the fields of `mask` (bits vm, plugin, instance, event) and wildcard elsewhere. */
function ruleFor(mask: number, decision: FilterDecision = { kind: 'action', action: `m${mask}`, args: [] }): FilterRule {
  return {
    vm: mask & 8 ? subject.vm : '*',
    plugin: mask & 4 ? subject.plugin : '*',
    instance: mask & 2 ? subject.instance : '*',
    event: mask & 1 ? subject.event : '*',
    decision,
  };
}

const maskName = (m: number): string => FIELDS.map((f, i) => (m & (8 >> i) ? f : '*')).join(' ');

const winner = (t: FilterTable, s: FilterSubject = subject): string => {
  const d = t.decide(s).decision;
  return d.kind === 'action' ? d.action : d.kind;
};

describe('FilterTable precedence', () => {
  it('with no rule, every event is notified and no rule is named', () => {
    const t = new FilterTable();
    expect(t.decide(subject)).toEqual({ decision: { kind: 'notify' }, rule: null });
  });

  it('for every pair of specificity masks, the rule with the lexicographically greater (vm, plugin, instance, event) flags wins', () => {
    let pairs = 0;
    for (let a = 0; a < 16; a++)
      for (let b = 0; b < 16; b++) {
        if (a === b) continue;
        const t = new FilterTable();
        t.set(ruleFor(a));
        t.set(ruleFor(b));
        expect(winner(t), `${maskName(a)} vs ${maskName(b)}`).toBe(`m${Math.max(a, b)}`);
        pairs++;
      }
    expect(pairs).toBe(240);
  });

  it('a higher field being exact outranks all lower fields being exact together', () => {
    const t = new FilterTable();
    t.set(ruleFor(0b0111)); // * signal 2 fatal
    t.set(ruleFor(0b1000)); // vm1 * * *
    expect(winner(t)).toBe('m8');
    t.clear();
    t.set(ruleFor(0b0011)); // * * 2 fatal
    t.set(ruleFor(0b0100)); // * signal * *
    expect(winner(t)).toBe('m4');
    t.clear();
    t.set(ruleFor(0b0001)); // * * * fatal
    t.set(ruleFor(0b0010)); // * * 2 *
    expect(winner(t)).toBe('m2');
  });

  it('with all sixteen rules present, removing the winner each time walks down the order 15, 14, ..., 0, then notify', () => {
    const t = new FilterTable();
    for (const m of [3, 14, 0, 9, 5, 12, 1, 15, 6, 10, 2, 13, 7, 11, 4, 8]) t.set(ruleFor(m));
    const order: string[] = [];
    for (let i = 0; i < 16; i++) {
      const v = t.decide(subject);
      expect(v.rule).not.toBeNull();
      order.push(winner(t));
      expect(t.clear(v.rule!)).toBe(1);
    }
    expect(order).toEqual(Array.from({ length: 16 }, (_, i) => `m${15 - i}`));
    expect(winner(t)).toBe('notify');
  });

  it('specificity() numbers the flags vm=8, plugin=4, instance=2, event=1', () => {
    expect(specificity({ vm: '*', plugin: '*', instance: '*', event: '*' })).toBe(0);
    expect(specificity({ vm: 'a', plugin: '*', instance: '*', event: '*' })).toBe(8);
    expect(specificity({ vm: '*', plugin: 'p', instance: 0, event: 'e' })).toBe(7);
    expect(specificity({ vm: '', plugin: 'p', instance: '*', event: 'e' })).toBe(13);
  });

  it('decide names the rule that won', () => {
    const t = new FilterTable();
    t.set(ruleFor(6, { kind: 'discard' }));
    const v = t.decide(subject);
    expect(v.decision).toEqual({ kind: 'discard' });
    expect(v.rule).toEqual(ruleFor(6, { kind: 'discard' }));
  });
});

describe('FilterTable matching', () => {
  it('an exact field matches only that value; a wildcard matches any', () => {
    const t = new FilterTable();
    t.set({ vm: '*', plugin: 'oom', instance: '*', event: '*', decision: { kind: 'discard' } });
    t.set({ vm: 'vm2', plugin: '*', instance: '*', event: '*', decision: { kind: 'action', action: 'restart', args: [] } });
    t.set({ vm: '*', plugin: '*', instance: 1, event: '*', decision: { kind: 'action', action: 'one', args: [] } });
    expect(winner(t, { vm: 'vm1', plugin: 'oom', instance: 0, event: 'kill' })).toBe('discard');
    expect(winner(t, { vm: 'vm1', plugin: 'signal', instance: 0, event: 'kill' })).toBe('notify');
    expect(winner(t, { vm: 'vm2', plugin: 'oom', instance: 0, event: 'kill' })).toBe('restart');
    expect(winner(t, { vm: 'vm1', plugin: 'signal', instance: 1, event: 'x' })).toBe('one');
    expect(winner(t, { vm: 'vm1', plugin: 'signal', instance: 3, event: 'x' })).toBe('notify');
  });

  it("vm '' is the host: exact, not a wildcard", () => {
    const t = new FilterTable();
    t.set({ vm: '', plugin: '*', instance: '*', event: '*', decision: { kind: 'discard' } });
    expect(winner(t, { vm: '', plugin: 'libvirt', instance: 0, event: 'other' })).toBe('discard');
    expect(winner(t, { vm: 'vm1', plugin: 'libvirt', instance: 0, event: 'other' })).toBe('notify');
  });

  it("an event whose fields are literally '*' does not pass for an exact match", () => {
    const t = new FilterTable();
    t.set({ vm: '*', plugin: '*', instance: 0, event: '*', decision: { kind: 'action', action: 'inst', args: [] } });
    t.set({ vm: '*', plugin: '*', instance: '*', event: '*', decision: { kind: 'discard' } });
    t.set({ vm: '*', plugin: 'oom', instance: '*', event: '*', decision: { kind: 'action', action: 'oom', args: [] } });
    // If plugin '*' counted as exact, the all-wildcard rule would be found at the plugin-exact level and beat the instance rule.
    expect(winner(t, { vm: '*', plugin: '*', instance: 0, event: '*' })).toBe('inst');
  });

  it('answers from its cache: a thousand decisions for one event compute once', () => {
    const t = new FilterTable();
    t.set(ruleFor(4));
    for (let i = 0; i < 1000; i++) t.decide({ ...subject });
    expect(t.misses).toBe(1);
    t.decide({ ...subject, instance: 3 });
    expect(t.misses).toBe(2);
  });

  it('a change to the rules invalidates cached answers', () => {
    const t = new FilterTable();
    t.set(ruleFor(0, { kind: 'discard' }));
    expect(winner(t)).toBe('discard');
    t.set(ruleFor(15, { kind: 'notify' }));
    expect(winner(t)).toBe('notify');
    t.clear(ruleFor(15));
    expect(winner(t)).toBe('discard');
    t.set(ruleFor(0, { kind: 'action', action: 'x', args: [] }));
    expect(winner(t)).toBe('x');
    t.clear();
    expect(winner(t)).toBe('notify');
  });

  it('stays right when the cache overflows its limit', () => {
    const t = new FilterTable({ cacheLimit: 3 });
    t.set({ vm: '*', plugin: '*', instance: '*', event: 'bad', decision: { kind: 'discard' } });
    for (let round = 0; round < 3; round++)
      for (let i = 0; i < 20; i++) {
        expect(winner(t, { vm: `vm${i}`, plugin: 'p', instance: i, event: 'bad' })).toBe('discard');
        expect(winner(t, { vm: `vm${i}`, plugin: 'p', instance: i, event: 'good' })).toBe('notify');
        expect(t.cacheSize).toBeLessThanOrEqual(3);
      }
    expect(t.cacheSize).toBeGreaterThan(0);
  });
});

describe('FilterTable set / clear / list', () => {
  it('set replaces the rule with the same key and returns the one it replaced', () => {
    const t = new FilterTable();
    expect(t.set(ruleFor(5, { kind: 'discard' }))).toBeUndefined();
    const before = t.set(ruleFor(5, { kind: 'action', action: 'page', args: ['ops'] }));
    expect(before?.decision).toEqual({ kind: 'discard' });
    expect(t.size).toBe(1);
    expect(t.list()).toEqual([ruleFor(5, { kind: 'action', action: 'page', args: ['ops'] })]);
    expect(winner(t)).toBe('page');
  });

  it('keeps its own frozen copy: changing the caller’s object later changes nothing', () => {
    const t = new FilterTable();
    const r = ruleFor(4, { kind: 'action', action: 'a', args: ['x'] });
    t.set(r);
    r.plugin = 'oom';
    (r.decision as { args: string[] }).args.push('y');
    expect(t.list()[0]).toEqual(ruleFor(4, { kind: 'action', action: 'a', args: ['x'] }));
    expect(Object.isFrozen(t.list()[0])).toBe(true);
  });

  it('clear(key) removes exactly that rule, wildcards taken literally; clear() removes all', () => {
    const t = new FilterTable();
    for (const m of [0, 4, 6, 15]) t.set(ruleFor(m));
    expect(t.clear({ vm: '*', plugin: '*', instance: '*', event: '*' })).toBe(1);
    expect(t.size).toBe(3);
    expect(t.clear({ vm: '*', plugin: '*', instance: '*', event: '*' })).toBe(0);
    expect(t.clear({ vm: 'vm9', plugin: 'signal', instance: 2, event: 'fatal' })).toBe(0);
    expect(t.list().map(specificity)).toEqual([15, 6, 4]);
    expect(t.clear()).toBe(3);
    expect(t.size).toBe(0);
    expect(winner(t)).toBe('notify');
  });

  it('list() gives the most specific first, then by key', () => {
    const t = new FilterTable();
    t.set({ vm: '*', plugin: 'b', instance: '*', event: '*', decision: { kind: 'discard' } });
    t.set({ vm: '*', plugin: '*', instance: '*', event: 'e', decision: { kind: 'discard' } });
    t.set({ vm: 'vm1', plugin: '*', instance: '*', event: '*', decision: { kind: 'discard' } });
    t.set({ vm: '*', plugin: 'a', instance: '*', event: '*', decision: { kind: 'discard' } });
    t.set({ vm: '*', plugin: 'a', instance: 3, event: '*', decision: { kind: 'discard' } });
    expect(t.list().map((r) => formatRule(r))).toEqual([
      'vm1 * * * discard',
      '* a 3 * discard',
      '* a * * discard',
      '* b * * discard',
      '* * * e discard',
    ]);
  });

  it('set refuses a malformed rule with FILTER_INVALID', () => {
    const t = new FilterTable();
    const bad: Array<[Partial<FilterRule>, string]> = [
      [{ plugin: 'sig*' }, 'contains'],
      [{ plugin: '' }, 'plugin is empty'],
      [{ event: 'a b' }, 'is not a name'],
      [{ instance: -1 }, 'instance -1'],
      [{ instance: 1.5 }, 'instance 1.5'],
      [{ vm: 'a\nb' }, 'is not a VM name'],
      [{ decision: { kind: 'alert' } as unknown as FilterDecision }, '"alert" is not notify, discard or action'],
      [{ decision: { kind: 'action', action: '', args: [] } }, 'action name is empty'],
    ];
    for (const [patch, msg] of bad) {
      const e = caught(() => t.set({ ...ruleFor(0, { kind: 'notify' }), ...patch }));
      expect(e.code, JSON.stringify(patch)).toBe(ErrorCode.FILTER_INVALID);
      expect(e.message).toContain(msg);
    }
    expect(t.size).toBe(0);
  });
});

describe('parseRule / formatRule', () => {
  it("parses the seed's order: PLUGIN INSTANCE EVENT DECISION, vm separately (default every VM)", () => {
    expect(parseRule(['signal', '0', 'fatal', 'notify'])).toEqual({
      vm: '*',
      plugin: 'signal',
      instance: 0,
      event: 'fatal',
      decision: { kind: 'notify' },
    });
    expect(parseRule(['*', '*', '*', 'discard'], 'vm1')).toEqual({
      vm: 'vm1',
      plugin: '*',
      instance: '*',
      event: '*',
      decision: { kind: 'discard' },
    });
    expect(parseRule(['libvirt', '*', 'panicked', 'action', 'failover', '--to', 'host2'], '')).toEqual({
      vm: '',
      plugin: 'libvirt',
      instance: '*',
      event: 'panicked',
      decision: { kind: 'action', action: 'failover', args: ['--to', 'host2'] },
    });
    expect(parseRule(['oom', '12', 'kill', 'action', 'restart']).decision).toEqual({ kind: 'action', action: 'restart', args: [] });
  });

  it('refuses bad input with FILTER_INVALID and says exactly what is wrong', () => {
    const cases: Array<[string[], string, string?]> = [
      [[], 'a filter rule is PLUGIN INSTANCE EVENT notify|discard|action NAME [ARG...]; got 0 words'],
      [['signal', '0', 'fatal'], 'a filter rule is PLUGIN INSTANCE EVENT notify|discard|action NAME [ARG...]; got 3 words: signal 0 fatal'],
      [['sig*', '0', 'fatal', 'notify'], `plugin "sig*" contains '*': the wildcard stands alone, there are no patterns`],
      [['', '0', 'fatal', 'notify'], 'plugin is empty'],
      [['signal', 'x', 'fatal', 'notify'], 'instance "x" is not * or a whole number from 0'],
      [['signal', '-1', 'fatal', 'notify'], 'instance "-1" is not * or a whole number from 0'],
      [['signal', '1.5', 'fatal', 'notify'], 'instance "1.5" is not * or a whole number from 0'],
      [['signal', '0', 'fa tal', 'notify'], 'event "fa tal" is not a name (a letter or digit, then letters, digits, _ . : -)'],
      [['signal', '0', 'fatal', 'alert'], '"alert" is not notify, discard or action (a filter rule is PLUGIN INSTANCE EVENT'],
      [['signal', '0', 'fatal', 'Notify'], '"Notify" is not notify, discard or action'],
      [['signal', '0', 'fatal', 'notify', 'now'], 'notify takes nothing after it; got "now"'],
      [['signal', '0', 'fatal', 'discard', 'a', 'b'], 'discard takes nothing after it; got "a" "b"'],
      [['signal', '0', 'fatal', 'action'], 'action needs a NAME: ... action NAME [ARG...]'],
      [['signal', '0', 'fatal', 'action', '-x'], 'action name "-x" is not a name'],
      [['signal', '0', 'fatal', 'notify'], 'vm "a\\tb" is not a VM name', 'a\tb'],
    ];
    for (const [words, msg, vm] of cases) {
      const e = caught(() => parseRule(words, vm));
      expect(e.code, words.join(' ')).toBe(ErrorCode.FILTER_INVALID);
      expect(e.message, words.join(' ')).toContain(msg);
    }
  });

  it('formatRule writes the vm then the words parseRule takes; ruleWords round-trips', () => {
    const rules: FilterRule[] = [
      { vm: '*', plugin: 'signal', instance: 0, event: 'fatal', decision: { kind: 'notify' } },
      { vm: 'vm1', plugin: '*', instance: '*', event: '*', decision: { kind: 'discard' } },
      {
        vm: '',
        plugin: 'libvirt',
        instance: '*',
        event: 'panicked',
        decision: { kind: 'action', action: 'exec', args: ['/bin/x', 'a b', ''] },
      },
    ];
    expect(rules.map(formatRule)).toEqual([
      '* signal 0 fatal notify',
      'vm1 * * * discard',
      '"" libvirt * panicked action exec /bin/x "a b" ""',
    ]);
    for (const r of rules) expect(parseRule(ruleWords(r), r.vm)).toEqual(r);
  });

  it('a parsed rule goes into the table as it is', () => {
    const t = new FilterTable();
    t.set(parseRule(['signal', '*', 'fatal', 'action', 'restart', 'now'], 'vm1'));
    expect(t.decide(subject).decision).toEqual({ kind: 'action', action: 'restart', args: ['now'] });
  });
});
