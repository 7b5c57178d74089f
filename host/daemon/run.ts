// `vesper daemon`: vesperd in the foreground, as systemd runs it. Logs (JSON lines, pino) go
// to stderr; SIGTERM and SIGINT stop it cleanly, SIGHUP is logged and ignored; a bad config stops it
// before it starts, and so does another vesperd holding the same store (VSP_DAEMON_RUNNING).
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
  // SIGHUP's default is death (status 129, socket left behind, and systemd's Restart=on-failure
  // does not restart a service killed by it). There is no configuration reload yet: say so and
  // keep serving. Set before start: a HUP while libvirt is slow to answer must not kill it either.
  process.on('SIGHUP', () =>
    log.warn({ signal: 'SIGHUP' }, 'SIGHUP ignored: vesperd does not reload its configuration yet; restart it to apply changes'),
  );
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
