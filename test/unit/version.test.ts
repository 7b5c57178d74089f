import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { VESPER_VERSION } from '../../proto/version.js';

describe('VESPER_VERSION', () => {
  it("equals package.json's version", () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(typeof pkg.version).toBe('string');
    expect(VESPER_VERSION).toBe(pkg.version);
  });
});
