// `vesper config check [FILE]`: the file checked as vesperd checks it, nothing started; exit 0
// with a one-line summary, or exit 1 with every mistake at its line.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { buildProgram } from '../../host/cli/main.js';

let dir: string;
let out: string;
let err: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-check-'));
  out = '';
  err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  process.exitCode = undefined;
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
  rmSync(dir, { recursive: true, force: true });
});

const check = (file: string): Promise<unknown> => buildProgram().parseAsync(['node', 'vesper', 'config', 'check', file]);

describe('vesper config check', () => {
  it('says OK with what the file sets, exit 0, and starts nothing (no socket, no store)', async () => {
    const f = join(dir, 'vesper.yaml');
    writeFileSync(
      f,
      `daemon: { socket: ${join(dir, 'v.sock')} }\nstore: { path: ${join(dir, 'e.db')} }\nfilters:\n  - { plugin: signal, event: '*', decision: discard }\nmetrics: { listen: 127.0.0.1:9477 }\n`,
    );
    await check(f);
    expect(process.exitCode ?? 0).toBe(0);
    expect(out).toBe(`${f}: configuration OK (1 filter, 0 attach rules, 0 SSH targets, metrics 127.0.0.1:9477)\n`);
    expect(err).toBe('');
    const { existsSync } = await import('node:fs');
    expect(existsSync(join(dir, 'v.sock')) || existsSync(join(dir, 'e.db'))).toBe(false);
  });

  it('lists every mistake with its line and exits 1', async () => {
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, 'daemon:\n  log_level: loud\nstroe: {}\n');
    await check(f);
    expect(process.exitCode).toBe(1);
    expect(out).toBe('');
    expect(err).toContain('VSP_CONFIG_INVALID: configuration NOT valid:');
    expect(err).toContain(`${f}:2:14: daemon.log_level: must be one of info, debug, warn, error`);
    expect(err).toContain(`${f}:3:1: stroe: unknown key (did you mean "store"?)`);
  });

  it('a file that is not there is a mistake too', async () => {
    await check(join(dir, 'missing.yaml'));
    expect(process.exitCode).toBe(1);
    expect(err).toContain('cannot read the config file: no such file');
  });
});
