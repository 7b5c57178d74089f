// Running POSIX sh on an SSH target, whatever the login shell there is: sshd hands a command
// to the user's shell, so the script goes to `sh -s` on stdin instead, its arguments on the
// command line. The scripts themselves are files in remote/ (shellcheck reads them there).
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { shellQuote as q } from './agent-link.js';
import type { SshConnection } from './connect.js';

/**
 * The script as one brace group: sh parses all of it before running any, so a command that
 * reads stdin cannot eat the rest of the script (and it reads /dev/null instead).
 */
export function shRun(conn: SshConnection, script: string, timeoutMs = 30_000, args: string[] = []): ReturnType<SshConnection['run']> {
  const cmd = args.length ? `sh -s -- ${args.map(q).join(' ')}` : 'sh -s';
  return conn.run(cmd, { stdin: `{\n${script}\n} </dev/null\n`, timeoutMs });
}

/** Runs a script on the target; its stdout, or VSP_SSH_REMOTE_FAILED saying what failed. */
export async function sh(conn: SshConnection, what: string, script: string, timeoutMs = 30_000, args: string[] = []): Promise<string> {
  const r = await shRun(conn, script, timeoutMs, args);
  if (r.code !== 0)
    throw new VesperError(
      ErrorCode.SSH_REMOTE_FAILED,
      `${conn.name}: ${what} failed (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`}): ${r.stderr.trim() || r.stdout.trim()}`,
    );
  return r.stdout;
}
