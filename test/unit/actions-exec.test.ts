// The exec action with real programs: small sh scripts written into a temp dir, which record
// what they were given (environment, stdin) or misbehave (run too long, ignore SIGTERM, leave a
// child behind).
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { envSegment, eventEnv, runExec } from '../../host/actions/exec.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { waitFor } from '../helpers/wait.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-exec-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

function event(payload: Record<string, unknown>, over: Partial<VesperEvent> = {}): VesperEvent {
  return {
    id: 42,
    vm: 'web-1',
    plugin: 'signal',
    instance: 2,
    event: 'signal',
    guestTimeUs: 1_700_000_000_000_001,
    hostTimeUs: 1_700_000_000_000_999,
    source: { agentRun: 'boot-a', seq: 7 },
    payload,
    disposition: 'action',
    ...over,
  };
}

function envFile(path: string): Map<string, string> {
  // `env -0`: NUL-separated, so values with newlines survive
  const m = new Map<string, string>();
  for (const entry of readFileSync(path, 'utf8').split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) m.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return m;
}

describe('runExec', () => {
  it('gives the script the event in VESPER_* variables and as one JSON line on stdin', async () => {
    const envOut = join(dir, 'env');
    const stdinOut = join(dir, 'stdin');
    const cmd = script('record.sh', `env -0 > '${envOut}'\ncat > '${stdinOut}'\necho "args: $*"\nexit 0`);
    const ev = event({
      signal: { sig: 11, sender: { pid: 5, comm: 'kill' }, deep: { a: { b: 1 } } },
      targetPid: 99,
      comm: "sh -c 'rm -rf /'",
      list: [1, 2],
      'odd key!': true,
      nothing: null,
      nul: 'a\u0000b',
    });
    const r = await runExec(ev, { command: cmd, args: ['one', 'two words'], timeoutMs: 10_000 });
    expect(r).toMatchObject({ exitCode: 0, signal: null, timedOut: false });
    expect(r.output).toBe('args: one two words\n');
    expect(r.durationMs).toBeGreaterThan(0);

    const env = envFile(envOut);
    expect(env.get('VESPER_EVENT_ID')).toBe('42');
    expect(env.get('VESPER_VM')).toBe('web-1');
    expect(env.get('VESPER_PLUGIN')).toBe('signal');
    expect(env.get('VESPER_INSTANCE')).toBe('2');
    expect(env.get('VESPER_EVENT')).toBe('signal');
    expect(env.get('VESPER_HOST_TIME_US')).toBe('1700000000000999');
    expect(env.get('VESPER_GUEST_TIME_US')).toBe('1700000000000001');
    expect(env.get('VESPER_DISPOSITION')).toBe('action');
    expect(JSON.parse(env.get('VESPER_PAYLOAD')!)).toEqual({ ...ev.payload, nul: 'a\u0000b' });
    // flattened scalars, one and two levels below a top-level field
    expect(env.get('VESPER_F_SIGNAL_SIG')).toBe('11');
    expect(env.get('VESPER_F_SIGNAL_SENDER_PID')).toBe('5');
    expect(env.get('VESPER_F_SIGNAL_SENDER_COMM')).toBe('kill');
    expect(env.get('VESPER_F_TARGET_PID')).toBe('99');
    expect(env.get('VESPER_F_COMM')).toBe("sh -c 'rm -rf /'");
    expect(env.get('VESPER_F_ODD_KEY')).toBe('true');
    expect(env.get('VESPER_F_NOTHING')).toBe('');
    expect(env.get('VESPER_F_NUL')).toBe('ab');
    // deeper than that, and lists: only in VESPER_PAYLOAD and on stdin
    expect([...env.keys()].filter((k) => k.startsWith('VESPER_F_DEEP') || k.startsWith('VESPER_F_LIST'))).toEqual([]);
    for (const k of env.keys()) if (k.startsWith('VESPER_')) expect(k).toMatch(/^[A-Z0-9_]+$/);

    const stdin = readFileSync(stdinOut, 'utf8');
    expect(stdin.endsWith('\n')).toBe(true);
    expect(stdin.trimEnd().includes('\n')).toBe(false);
    expect(JSON.parse(stdin)).toEqual(ev);
  });

  it("does not pass the daemon's own VESPER_* variables on, but does pass the rest (PATH)", async () => {
    const envOut = join(dir, 'env');
    const cmd = script('record.sh', `env -0 > '${envOut}'`);
    process.env.VESPER_SOMETHING_OF_THE_DAEMON = 'x';
    try {
      await runExec(event({}), { command: cmd, timeoutMs: 10_000 });
    } finally {
      delete process.env.VESPER_SOMETHING_OF_THE_DAEMON;
    }
    const env = envFile(envOut);
    expect(env.has('VESPER_SOMETHING_OF_THE_DAEMON')).toBe(false);
    expect(env.get('PATH')).toBe(process.env.PATH);
    expect(env.get('VESPER_EVENT_ID')).toBe('42');
  });

  it('reports the exit status and keeps only the last 4 KiB of output, stdout and stderr together', async () => {
    const cmd = script(
      'loud.sh',
      // 100 lines of 100 bytes on stdout, then a marker on stderr
      `i=0\nwhile [ $i -lt 100 ]; do printf '%099d\\n' $i; i=$((i+1)); done\necho LAST-ON-STDERR >&2\nexit 3`,
    );
    const r = await runExec(event({}), { command: cmd, timeoutMs: 10_000 });
    expect(r.exitCode).toBe(3);
    expect(r.timedOut).toBe(false);
    expect(Buffer.byteLength(r.output)).toBe(4096);
    expect(r.output.endsWith('LAST-ON-STDERR\n')).toBe(true);
    expect(r.output).toContain(`${'0'.repeat(97)}99\n`);
    expect(r.output).not.toContain(`${'0'.repeat(98)}0\n`); // the first line is long gone
  });

  it('a program that runs too long gets SIGTERM at the timeout', async () => {
    const cmd = script('slow.sh', 'exec sleep 30');
    const t0 = Date.now();
    const r = await runExec(event({}), { command: cmd, timeoutMs: 300 });
    expect(r).toMatchObject({ timedOut: true, exitCode: null, signal: 'SIGTERM' });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(r.durationMs).toBeGreaterThanOrEqual(290);
  });

  it('one that ignores SIGTERM gets SIGKILL 2 s later, and what it started dies with it', async () => {
    const pidFile = join(dir, 'child.pid');
    // The trap is inherited by the background sleep (ignored signals survive exec), so only
    // SIGKILL to the whole process group ends both.
    const cmd = script('stubborn.sh', `trap '' TERM\nsleep 60 &\necho $! > '${pidFile}'\nwhile :; do sleep 1; done`);
    const r = await runExec(event({}), { command: cmd, timeoutMs: 300 });
    expect(r.timedOut).toBe(true);
    expect(r.signal).toBe('SIGKILL');
    expect(r.durationMs).toBeGreaterThanOrEqual(2200);
    expect(r.durationMs).toBeLessThan(4500);
    const child = Number(readFileSync(pidFile, 'utf8'));
    expect(child).toBeGreaterThan(1);
    await waitFor('the background child to be gone', () => !alive(child), 5000);
  });

  it('a missing command is VSP_ACTION_FAILED naming the path', async () => {
    const missing = join(dir, 'no-such-script.sh');
    const err = await runExec(event({}), { command: missing, timeoutMs: 1000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VesperError);
    expect((err as VesperError).code).toBe(ErrorCode.ACTION_FAILED);
    expect((err as VesperError).message).toContain(missing);
    expect((err as VesperError).message).toContain('not found');
  });

  it('a file that is not executable is VSP_ACTION_FAILED too', async () => {
    const p = join(dir, 'plain.sh');
    writeFileSync(p, '#!/bin/sh\nexit 0\n');
    const err = await runExec(event({}), { command: p, timeoutMs: 1000 }).catch((e: unknown) => e);
    expect((err as VesperError).code).toBe(ErrorCode.ACTION_FAILED);
    expect((err as VesperError).message).toContain(p);
  });

  it('a huge payload does not break the exec: VESPER_PAYLOAD is left empty, stdin has it all', async () => {
    const envOut = join(dir, 'env');
    const sizeOut = join(dir, 'size');
    const cmd = script('big.sh', `env -0 > '${envOut}'\nwc -c > '${sizeOut}'`);
    const ev = event({ blob: 'x'.repeat(300_000), small: 1 });
    const r = await runExec(ev, { command: cmd, timeoutMs: 10_000 });
    expect(r.exitCode).toBe(0);
    const env = envFile(envOut);
    expect(env.get('VESPER_PAYLOAD')).toBe('');
    expect(env.get('VESPER_PAYLOAD_TRUNCATED')).toBe('1');
    expect(env.get('VESPER_F_SMALL')).toBe('1');
    expect(env.get('VESPER_F_BLOB')!.length).toBe(4096);
    expect(Number(readFileSync(sizeOut, 'utf8').trim())).toBe(Buffer.byteLength(JSON.stringify(ev)) + 1);
  });

  it('a program that does not read stdin is fine', async () => {
    const cmd = script('deaf.sh', 'exit 0');
    const r = await runExec(event({ blob: 'y'.repeat(200_000) }), { command: cmd, timeoutMs: 10_000 });
    expect(r.exitCode).toBe(0);
  });
});

describe('variable names', () => {
  it('are upper snake case and shell-safe', () => {
    expect(envSegment('targetPid')).toBe('TARGET_PID');
    expect(envSegment('OOMKill')).toBe('OOM_KILL');
    expect(envSegment('io-error')).toBe('IO_ERROR');
    expect(envSegment('a b.c')).toBe('A_B_C');
    expect(envSegment('--')).toBe('');
    expect(envSegment('$(reboot)')).toBe('REBOOT');
  });

  it('two keys spelling the same name: the first keeps it', () => {
    const env = eventEnv({ ...event({}), payload: { target_pid: 1, targetPid: 2 } });
    expect(env.VESPER_F_TARGET_PID).toBe('1');
  });

  it('host events have empty guest time, and no id before they are stored', () => {
    const env = eventEnv({ ...event({}), id: undefined, guestTimeUs: null, disposition: undefined });
    expect(env.VESPER_EVENT_ID).toBe('');
    expect(env.VESPER_GUEST_TIME_US).toBe('');
    expect(env.VESPER_DISPOSITION).toBe('');
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
