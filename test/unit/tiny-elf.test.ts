import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exitProgram, segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';

// The programs are raw x86-64 Linux machine code.
const native = platform() === 'linux' && arch() === 'x64';

describe.runIf(native)('tiny ELF programs', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-elf-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('segfaultProgram() dies of SIGSEGV', () => {
    const path = writeProgram(join(dir, 'segv'), segfaultProgram());
    expect(statSync(path).mode & 0o111).toBe(0o111);
    const r = spawnSync(path, [], { timeout: 10_000 });
    expect(r.error).toBeUndefined();
    expect(r.signal).toBe('SIGSEGV');
    expect(r.status).toBeNull();
  });

  it.each([
    [7, 7],
    [0, 0],
    [255, 255],
    [300, 300 & 0xff],
  ])('exitProgram(%i) exits with status %i', (code, status) => {
    const path = writeProgram(join(dir, `exit${code}`), exitProgram(code));
    const r = spawnSync(path, [], { timeout: 10_000 });
    expect(r.error).toBeUndefined();
    expect(r.signal).toBeNull();
    expect(r.status).toBe(status);
  });

  it('builds a well-formed ELF header', () => {
    const b = exitProgram(7);
    expect(b.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(b[4]).toBe(2); // 64-bit
    expect(b.readUInt16LE(18)).toBe(0x3e); // x86-64
    expect(Number(b.readBigUInt64LE(24))).toBe(0x400000 + 120); // entry just after the headers
    expect(b.length).toBe(120 + 12);
  });
});
