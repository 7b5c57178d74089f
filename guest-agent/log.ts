import pino from 'pino';

export type Logger = pino.Logger;

/** Logs go to stderr as JSON lines (stdout may be the channel itself, with --transport stdio). */
export function createLogger(level = process.env.VESPER_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'vesper-agent', level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}
