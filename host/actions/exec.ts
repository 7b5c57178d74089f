// The `exec` action: runs an operator's program for an event. No shell is involved: the
// command and its arguments are passed as they are, so nothing in an event (a guest-chosen
// process name, say) can become shell syntax. The program learns about the event twice:
//
//  - environment variables: VESPER_EVENT_ID, VESPER_VM, VESPER_PLUGIN, VESPER_INSTANCE,
//    VESPER_EVENT, VESPER_HOST_TIME_US, VESPER_GUEST_TIME_US, VESPER_DISPOSITION, VESPER_PAYLOAD
//    (the payload as JSON), and every scalar payload field down to two levels below a top-level
//    field as VESPER_F_<PATH>, e.g. {signal: {sig: 11, sender: {pid: 5}}} gives VESPER_F_SIGNAL_SIG=11
//    and VESPER_F_SIGNAL_SENDER_PID=5 (names upper snake case, only A-Z 0-9 _);
//  - stdin: the whole event as one JSON line, for anything the variables do not carry.
//
// Payloads come from guests, so they are untrusted: NUL bytes are dropped (the kernel would
// refuse the environment), values are capped, and an oversized VESPER_PAYLOAD is left empty
// (VESPER_PAYLOAD_TRUNCATED=1) rather than making the exec fail with E2BIG; stdin has it all.
//
// The program runs in its own process group, so a timeout stops what it started too: SIGTERM
// to the group, SIGKILL to the group 2 s later (or as soon as the program itself is gone).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from '../notify/event.js';

export interface ExecOptions {
  /** the program: a path, or a name looked up in PATH */
  command: string;
  args?: string[];
  /** how long the program may run before it is stopped */
  timeoutMs: number;
  cwd?: string;
  /** between SIGTERM and SIGKILL on a timeout (default 2000 ms) */
  killGraceMs?: number;
}

export interface ExecResult {
  /** the exit status, or null when a signal ended the program */
  exitCode: number | null;
  /** the signal that ended the program ('SIGTERM', ...), or null */
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
  /** the last 4 KiB of stdout and stderr, interleaved as they arrived */
  output: string;
}

export const OUTPUT_TAIL_BYTES = 4096;
const DEFAULT_KILL_GRACE_MS = 2000;
/** Once the program has exited, how long its leftovers may keep stdout/stderr open. */
const SETTLE_MS = 250;
/** After SIGKILL, how long to wait for the exit before giving up on it (a process stuck in D state). */
const KILL_WAIT_MS = 5000;
const MAX_FIELD_VARS = 128;
const MAX_FIELD_CHARS = 4096;
const MAX_PAYLOAD_CHARS = 64 * 1024;

/** The environment variables an exec'd program gets for an event (on top of the daemon's own). */
export function eventEnv(ev: VesperEvent): Record<string, string> {
  const payloadJson = jsonOf(ev.payload ?? {});
  const env: Record<string, string> = {
    VESPER_EVENT_ID: ev.id === undefined ? '' : String(ev.id),
    VESPER_VM: clean(ev.vm),
    VESPER_PLUGIN: clean(ev.plugin),
    VESPER_INSTANCE: String(ev.instance),
    VESPER_EVENT: clean(ev.event),
    VESPER_HOST_TIME_US: String(ev.hostTimeUs),
    VESPER_GUEST_TIME_US: ev.guestTimeUs === null ? '' : String(ev.guestTimeUs),
    VESPER_DISPOSITION: ev.disposition ?? '',
    VESPER_PAYLOAD: payloadJson.length <= MAX_PAYLOAD_CHARS ? payloadJson : '',
  };
  if (payloadJson.length > MAX_PAYLOAD_CHARS) env.VESPER_PAYLOAD_TRUNCATED = '1';
  let fields = 0;
  const visit = (value: unknown, path: string[]): void => {
    if (fields >= MAX_FIELD_VARS) return;
    if (value !== null && typeof value === 'object') {
      // Arrays have no good variable form; they are in VESPER_PAYLOAD and on stdin.
      if (Array.isArray(value) || path.length >= 3) return;
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) visit(v, [...path, k]);
      return;
    }
    const scalar = scalarText(value);
    if (scalar === null) return;
    const segments = path.map(envSegment);
    if (segments.some((s) => s === '')) return;
    const name = `VESPER_F_${segments.join('_')}`;
    if (name in env) return; // two fields that spell the same name: the first one keeps it
    env[name] = clean(scalar).slice(0, MAX_FIELD_CHARS);
    fields++;
  };
  for (const [k, v] of Object.entries(ev.payload ?? {})) visit(v, [k]);
  return env;
}

/** One payload key as part of a variable name: `targetPid` and `target-pid` give TARGET_PID. */
export function envSegment(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9]+/g, '_')
    .replace(/^_+|_+$/g, '')
    .toUpperCase();
}

/** Runs the program for the event; resolves when it has ended (however it ended). */
export function runExec(ev: VesperEvent, o: ExecOptions): Promise<ExecResult> {
  const args = o.args ?? [];
  const graceMs = o.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  const env: NodeJS.ProcessEnv = {};
  // The daemon's environment (PATH, LANG...), without VESPER_* of its own: those the program
  // sees are the event's.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VESPER_')) env[k] = v;
  Object.assign(env, eventEnv(ev));
  const stdinLine = `${jsonOf(ev)}\n`;

  return new Promise<ExecResult>((resolve, reject) => {
    const started = performance.now();
    let child: ChildProcess;
    try {
      child = spawn(o.command, args, { cwd: o.cwd, env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    } catch (err) {
      reject(new VesperError(ErrorCode.ACTION_FAILED, `exec ${o.command}: ${(err as Error).message}`, '', { cause: err }));
      return;
    }
    const tail = new OutputTail(OUTPUT_TAIL_BYTES);
    let timedOut = false;
    let exited: { code: number | null; signal: string | null; atMs: number } | null = null;
    let done = false;
    const timers = new Set<NodeJS.Timeout>();
    const after = (ms: number, fn: () => void): void => {
      const t = setTimeout(() => {
        timers.delete(t);
        fn();
      }, ms);
      timers.add(t);
    };
    const killGroup = (sig: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        // the group is already gone
      }
    };
    const finish = (): void => {
      if (done) return;
      done = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.stdin?.destroy();
      resolve({
        exitCode: exited?.code ?? null,
        signal: exited?.signal ?? null,
        timedOut,
        durationMs: Math.round(((exited?.atMs ?? performance.now()) - started) * 1000) / 1000,
        output: tail.text(),
      });
    };

    child.stdout?.on('data', (c: Buffer) => tail.push(c));
    child.stderr?.on('data', (c: Buffer) => tail.push(c));
    // A program that does not read its stdin and exits early makes this write fail (EPIPE).
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(stdinLine);

    child.on('error', (err: NodeJS.ErrnoException) => {
      if (done) return;
      if (child.pid !== undefined && exited === null) {
        // An error after a successful spawn (a failed kill): the exit still comes.
        return;
      }
      done = true;
      for (const t of timers) clearTimeout(t);
      const what =
        err.code === 'ENOENT' && o.cwd !== undefined && !existsSync(o.cwd)
          ? `working directory ${o.cwd} does not exist`
          : err.code === 'ENOENT'
            ? `command not found: ${o.command}`
            : err.code === 'EACCES'
              ? `command is not executable: ${o.command}`
              : err.message;
      reject(new VesperError(ErrorCode.ACTION_FAILED, `exec ${o.command}: ${what}`, err.code ?? '', { cause: err }));
    });
    child.on('exit', (code, signal) => {
      exited = { code, signal, atMs: performance.now() };
      if (timedOut) killGroup('SIGKILL'); // what the timed-out program left behind
      // Normally 'close' follows at once; a background process holding the pipes must not
      // keep the action open.
      after(SETTLE_MS, finish);
    });
    child.on('close', () => {
      if (exited) finish();
    });

    after(o.timeoutMs, () => {
      if (exited) return;
      timedOut = true;
      killGroup('SIGTERM');
      after(graceMs, () => {
        if (exited) return;
        killGroup('SIGKILL');
        after(KILL_WAIT_MS, finish);
      });
    });
  });
}

/** Keeps the last `max` bytes pushed through it. */
class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private trimmed = false;
  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes > this.max && this.chunks.length) {
      const first = this.chunks[0]!;
      const over = this.bytes - this.max;
      if (first.length <= over) {
        this.chunks.shift();
        this.bytes -= first.length;
      } else {
        this.chunks[0] = first.subarray(over);
        this.bytes -= over;
      }
      this.trimmed = true;
    }
  }

  text(): string {
    let buf = Buffer.concat(this.chunks);
    if (this.trimmed) {
      // Cut in the middle of a UTF-8 sequence: drop its continuation bytes.
      let i = 0;
      while (i < buf.length && i < 3 && (buf[i]! & 0xc0) === 0x80) i++;
      buf = buf.subarray(i);
    }
    return buf.toString('utf8');
  }
}

function scalarText(v: unknown): string | null {
  if (v === null) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return null;
}

// eslint-disable-next-line no-control-regex
const NUL = /\u0000/g;

function clean(s: string): string {
  return s.replace(NUL, '');
}

/** JSON that does not throw on a bigint (payloads should not hold one, but they come from afar). */
function jsonOf(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? 'null';
  } catch {
    return 'null';
  }
}
