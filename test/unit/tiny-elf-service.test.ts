import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crashOnSignalProgram, exitWithArgProgram, writeProgram } from '../rigs/demo/tiny-elf.js';

// The programs are raw x86-64 Linux machine code.
const native = platform() === 'linux' && arch() === 'x64';
const SIGUSR1_BIT = 1n << 9n; // bit (signo - 1) of /proc/PID/status SigCgt

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the program did not exit within 10 s')), 10_000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/** Resolves once the program has installed its SIGUSR1 handler (signals sent earlier would just kill it). */
async function handlerInstalled(pid: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const m = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m && (BigInt(`0x${m[1]}`) & SIGUSR1_BIT) !== 0n) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('SIGUSR1 handler never installed');
}

describe.runIf(native)('tiny ELF service programs', () => {
  let dir: string;
  let svc: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-elf-svc-'));
    svc = writeProgram(join(dir, 'vesper-demo-svc'), crashOnSignalProgram());
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('crashOnSignalProgram() keeps running, then dies of SIGSEGV on SIGUSR1', async () => {
    const child = spawn(svc, [], { stdio: 'ignore' });
    const done = exited(child);
    await handlerInstalled(child.pid!);
    // Still alive after a moment: it sleeps in pause(), it does not exit on its own.
    await new Promise((r) => setTimeout(r, 100));
    expect(child.exitCode).toBeNull();
    expect(readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim()).toBe('vesper-demo-svc');
    child.kill('SIGUSR1');
    expect(await done).toEqual({ code: null, signal: 'SIGSEGV' });
  });

  it('crashOnSignalProgram() dies of SIGTERM on SIGTERM', async () => {
    const child = spawn(svc, [], { stdio: 'ignore' });
    const done = exited(child);
    await handlerInstalled(child.pid!);
    child.kill('SIGTERM');
    expect(await done).toEqual({ code: null, signal: 'SIGTERM' });
  });

  it.each([
    [[], 0],
    [['0'], 0],
    [['3'], 3],
    [['42'], 42],
    [['255'], 255],
    [['300'], 300 & 0xff],
    [['7x'], 7],
  ])('exitWithArgProgram() with %j exits with status %i', (args, status) => {
    const path = writeProgram(join(dir, 'vesper-exit'), exitWithArgProgram());
    const r = spawnSync(path, args, { timeout: 10_000 });
    expect(r.error).toBeUndefined();
    expect(r.signal).toBeNull();
    expect(r.status).toBe(status);
  });
});
