// `vesper daemon`: vesperd in the foreground, as systemd runs it. Logs (JSON lines, pino) go
// to stderr; SIGTERM and SIGINT stop it cleanly; a bad config stops it before it starts.
import pino from 'pino';
import { existsSync } from 'node:fs';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../config/load.js';
import { Vesperd } from './vesperd.js';

export async function runDaemon(o: { configPath?: string | undefined }): Promise<void> {
  const path = o.configPath ?? DEFAULT_CONFIG_PATH;
  if (o.configPath && !existsSync(o.configPath)) throw new VesperError(ErrorCode.CONFIG_INVALID, `${o.configPath}: no such file`);
  const config = loadConfig(path);
  const log = pino({ level: config.daemon.logLevel, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
  const d = new Vesperd({ config, log });
  await d.start();
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, 'stopping');
      d.stop()
        .catch((err: Error) => log.error({ err: err.message }, 'stop failed'))
        .finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
