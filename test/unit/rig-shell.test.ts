// The guest image's shell scripts are real files, so shellcheck sees them: they must stay clean.
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const GUEST = resolve(import.meta.dirname, '../rigs/image/guest');
const scripts = readdirSync(GUEST)
  .filter((f) => f.endsWith('.sh'))
  .map((f) => join(GUEST, f));
const haveShellcheck = spawnSync('shellcheck', ['--version']).status === 0;

describe('the guest image scripts', () => {
  it('are there: init and the fault injector', () => {
    expect(scripts.map((s) => s.slice(GUEST.length + 1)).sort()).toEqual(['init.sh', 'vesper-fault.sh']);
  });

  it.skipIf(!haveShellcheck)('pass shellcheck (skipped: shellcheck is not installed; apt-get install shellcheck)', () => {
    // Throws with shellcheck's findings in the message if there are any.
    execFileSync('shellcheck', ['--format=gcc', ...scripts], { encoding: 'utf8' });
  });
});
