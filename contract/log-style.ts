// The log lines of vesperd and of the guest agent. pino writes JSON; where stderr goes decides
// what the reader gets:
//   the journal (JOURNAL_STREAM matches stderr): `<N>message key=value ...`, N the syslog
//     priority, so `journalctl -p err -u vesperd` (or `-u vesper-agent` in a guest) finds the
//     errors (sd-daemon(3) prefixes);
//   a terminal: `HH:MM:SS.mmm LEVEL message key=value ...`, for a person;
//   anything else (a file, a pipe, a test): the JSON lines as pino made them.
import { fstatSync, writeSync } from 'node:fs';

export type LogStyle = 'journal' | 'terminal' | 'json';

/** pino's level numbers → syslog priorities (sd-daemon.h: SD_ERR is <3>, ...). */
export function syslogPriority(level: number): number {
  if (level >= 60) return 2; // fatal: crit
  if (level >= 50) return 3; // error: err
  if (level >= 40) return 4; // warn: warning
  if (level >= 30) return 6; // info
  return 7; // debug, trace
}

const NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** pino's own fields, not the message's */
const OWN = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'v']);

function valueText(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  const s = typeof v === 'string' ? v : (JSON.stringify(v) ?? 'undefined');
  return /^[^\s"=\\]+$/.test(s) && typeof v === 'string' ? s : JSON.stringify(s);
}

/** One pino JSON line in the style asked for (the line itself for json, or when it is not JSON). */
export function formatLine(line: string, style: LogStyle): string {
  if (style === 'json') return line;
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const level = typeof o['level'] === 'number' ? o['level'] : 30;
  const fields = Object.entries(o)
    .filter(([k]) => !OWN.has(k))
    .map(([k, v]) => `${k}=${valueText(v)}`)
    .join(' ');
  const msg = typeof o['msg'] === 'string' ? o['msg'] : JSON.stringify(o['msg'] ?? '');
  const text = `${msg}${fields ? ` ${fields}` : ''}`.replace(/\n/g, '\\n');
  if (style === 'journal') return `<${syslogPriority(level)}>${text}\n`;
  const t = typeof o['time'] === 'number' ? new Date(o['time']) : new Date();
  return `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, '0')} ${(NAMES[level] ?? String(level)).padEnd(5)} ${text}\n`;
}

/** pino's destination for the journal and terminal styles: each line formatted, written to fd 2 at once. */
export function styledDestination(style: Exclude<LogStyle, 'json'>, fd = 2): { write(line: string): void } {
  return {
    write(line: string): void {
      for (const l of line.split('\n')) if (l) writeSync(fd, formatLine(l, style));
    },
  };
}

/** Where stderr goes: the journal, a terminal, or elsewhere (JSON). */
export function logStyleOf(isJournal: boolean, isTty: boolean): LogStyle {
  return isJournal ? 'journal' : isTty ? 'terminal' : 'json';
}

/**
 * Whether stderr is connected to the journal: systemd sets JOURNAL_STREAM to the device and
 * inode of the stream it gave the service; a stderr redirected elsewhere has others.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const js = env['JOURNAL_STREAM'];
  if (!js) return false;
  const [dev, ino] = js.split(':');
  try {
    const st = fstatSync(fd, { bigint: true });
    return String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    return false;
  }
}
