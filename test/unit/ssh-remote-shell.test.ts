// The scripts `vesper agent install|uninstall|status` run on an SSH target are real files in
// host/ssh/remote/, so shellcheck sees them: they must stay clean, as POSIX sh (the target's
// sh may be dash or busybox).
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const REMOTE = resolve(import.meta.dirname, '../../host/ssh/remote');
const scripts = readdirSync(REMOTE)
  .filter((f) => f.endsWith('.sh'))
  .map((f) => join(REMOTE, f));
const haveShellcheck = spawnSync('shellcheck', ['--version']).status === 0;

describe('the remote scripts of the SSH install', () => {
  it('are there: facts, prepare-prefix, stop-agent, remove-agent', () => {
    expect(scripts.map((s) => s.slice(REMOTE.length + 1)).sort()).toEqual([
      'facts.sh',
      'prepare-prefix.sh',
      'remove-agent.sh',
      'stop-agent.sh',
    ]);
  });

  it('parse as sh', () => {
    for (const s of scripts) expect(spawnSync('sh', ['-n', s], { encoding: 'utf8' }).stderr, s).toBe('');
  });

  it.skipIf(!haveShellcheck)('pass shellcheck as POSIX sh (skipped: shellcheck is not installed; apt-get install shellcheck)', () => {
    // Throws with shellcheck's findings in the message if there are any.
    execFileSync('shellcheck', ['--shell=sh', '--format=gcc', ...scripts], { encoding: 'utf8' });
  });
});
