import pino from 'pino';
import { isatty } from 'node:tty';
import { logStyleOf, stderrIsJournal, styledDestination } from '../contract/log-style.js';

export type Logger = pino.Logger;

/**
 * Logs go to stderr (stdout may be the channel itself, with --transport stdio), as vesperd's do:
 * with their syslog priority when systemd gave stderr to the journal (`journalctl -p warning -u
 * vesper-agent` finds the warnings), readable lines on a terminal (the small guest's serial
 * console is one), JSON lines anywhere else (a file, a pipe). The journal knows the unit and the pid; JSON lines
 * carry them.
 */
export function createLogger(level = process.env.VESPER_LOG_LEVEL ?? 'info'): Logger {
  const style = logStyleOf(stderrIsJournal(), isatty(2));
  if (style === 'json') return pino({ name: 'vesper-agent', level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
  return pino({ level, base: null }, styledDestination(style));
}
