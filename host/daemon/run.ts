// `vesper daemon`: vesperd in the foreground, as systemd runs it. Logs go to stderr: with their
// syslog priority when stderr is the journal, readable lines on a terminal, pino's JSON lines
// otherwise (contract/log-style.ts). Under `Type=notify` it says READY=1 once the API, the store and
// the metrics are up, and feeds `WatchdogSec=` from the event loop (sd-notify.ts). SIGTERM and
// SIGINT stop it cleanly; SIGHUP reads the config file again and applies what can change while
// it runs (reload.ts), keeping the old config when the new file has a mistake. A bad config
// stops it before it starts, and so does another vesperd holding the same store
// (VSP_DAEMON_RUNNING).
import pino, { type DestinationStream } from 'pino';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { logStyleOf, stderrIsJournal, styledDestination } from '../../contract/log-style.js';
import { SdNotify } from './sd-notify.js';
import { Vesperd } from './vesperd.js';

export async function runDaemon(o: { configPath?: string | undefined }): Promise<void> {
  const path = resolve(o.configPath ?? DEFAULT_CONFIG_PATH); // named whole in the start line, status and reloads
  if (o.configPath && !existsSync(o.configPath)) throw new VesperError(ErrorCode.CONFIG_INVALID, `${o.configPath}: no such file`);
  const config = loadConfig(o.configPath); // the default file may be missing: all defaults then
  const style = logStyleOf(stderrIsJournal(), process.stderr.isTTY === true);
  const dest: DestinationStream = style === 'json' ? pino.destination({ dest: 2, sync: true }) : styledDestination(style);
  const log = pino({ level: config.daemon.logLevel, base: { pid: process.pid } }, dest);
  const sd = new SdNotify({ warn: (what) => log.warn(what) });
  // SIGHUP's default is death; until the daemon runs, a HUP is remembered and applied once it does.
  let d: Vesperd | null = null;
  let hupWhileStarting = false;
  let reloading = Promise.resolve();
  const onHup = (): void => {
    if (!d) {
      hupWhileStarting = true;
      log.info({ signal: 'SIGHUP' }, 'SIGHUP while starting: the config is read again once vesperd runs');
      return;
    }
    const daemon = d;
    reloading = reloading.then(() => reload(daemon, o.configPath, path, log, sd));
  };
  process.on('SIGHUP', onHup);
  d = new Vesperd({ config, log, configPath: path });
  await d.start();
  const every = sd.startWatchdog();
  if (sd.enabled) {
    await sd.notify('READY=1', `STATUS=vesperd ${VESPER_VERSION}: ${d.vms.size} VMs, API on ${config.daemon.socket}`);
    log.info({ watchdogMs: every || null }, 'told the service manager: ready');
  }
  const daemon = d;
  if (hupWhileStarting) onHup();
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, 'stopping');
      sd.stop();
      void sd.notify('STOPPING=1');
      reloading
        .then(() => daemon.stop())
        .catch((err: Error) => log.error({ err: err.message }, 'stop failed'))
        .finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

/** SIGHUP: the file again; applied when it is sound, else the old config stays and the log says why. */
async function reload(d: Vesperd, given: string | undefined, path: string, log: pino.Logger, sd: SdNotify): Promise<void> {
  log.info({ signal: 'SIGHUP', config: path }, 'reloading the configuration');
  let next: Config;
  try {
    next = loadConfig(given);
  } catch (err) {
    const e = err as VesperError;
    log.error(
      { code: e.code ?? ErrorCode.CONFIG_INVALID, config: path, err: e.message },
      'configuration NOT reloaded: the file has mistakes; the running configuration stays in force',
    );
    return;
  }
  await sd.notify('RELOADING=1', `MONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
  try {
    const plan = await d.reload(next);
    if (!plan.applied.length && !plan.needRestart.length) log.info({ config: path }, 'configuration reloaded: nothing changed');
    else
      log.info(
        { config: path, applied: plan.applied, needRestart: plan.needRestart },
        `configuration reloaded: ${plan.applied.length ? `applied ${plan.applied.join(', ')}` : 'nothing applied'}${plan.needRestart.length ? `; ${plan.needRestart.join(', ')} changed but apply only at a restart (the old values stay)` : ''}`,
      );
  } catch (err) {
    const e = err as VesperError;
    log.error(
      { code: e.code ?? ErrorCode.CONFIG_INVALID, config: path, err: e.message },
      'configuration NOT reloaded; the running configuration stays in force',
    );
  } finally {
    await sd.notify('READY=1');
  }
}
