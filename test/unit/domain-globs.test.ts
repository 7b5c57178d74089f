// libvirt.domains: which domains a vesperd watches.
import { describe, expect, it } from 'vitest';
import { globsToRegExp } from '../../host/daemon/vm-table.js';

describe('globsToRegExp', () => {
  it('matches names and globs, whole names only', () => {
    const r = globsToRegExp(['db*', 'web-?', 'exact.name']);
    for (const yes of ['db', 'db1', 'db-primary', 'web-1', 'exact.name']) expect(r.test(yes), yes).toBe(true);
    for (const no of ['xdb1', 'web-10', 'web-', 'exactxname', 'exact.name2']) expect(r.test(no), no).toBe(false);
  });
  it("'*' is everything", () => {
    expect(globsToRegExp(['*']).test('anything-at-all')).toBe(true);
  });
  it('regular-expression characters are plain', () => {
    const r = globsToRegExp(['a+b(c)[d]']);
    expect(r.test('a+b(c)[d]')).toBe(true);
    expect(r.test('aab(c)d')).toBe(false);
  });
});
