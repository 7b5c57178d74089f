// dist/host/vesper-alert.mjs: `vesper alert-pacemaker` alone, for the alert agent
// (host/pacemaker/alert-agent.sh), loading only what sending one alert needs.
//   node vesper-alert.mjs [--socket PATH] [--timeout DURATION] [--dry-run]
// Same output, errors and exit statuses as `vesper alert-pacemaker`.
import { parseArgs } from 'node:util';
import { ErrorCode, VesperError, exitStatusFor } from '../../proto/errors.js';
import { parseDuration } from '../config/units.js';
import { DEFAULT_ALERT_SOCKET, alertEvent } from '../pacemaker/alert-event.js';
import { sendAlert } from './alert-send.js';

async function main(): Promise<void> {
  let values: { socket?: string; timeout?: string; 'dry-run'?: boolean };
  try {
    ({ values } = parseArgs({
      options: { socket: { type: 'string' }, timeout: { type: 'string', default: '5s' }, 'dry-run': { type: 'boolean' } },
      allowPositionals: false,
    }));
  } catch (err) {
    throw new VesperError(ErrorCode.USAGE, (err as Error).message);
  }
  let ms: number;
  try {
    ms = parseDuration(values.timeout ?? '5s');
  } catch (err) {
    throw new VesperError(ErrorCode.USAGE, `--timeout: ${(err as Error).message}`);
  }
  if (values['dry-run']) {
    const { event, payload } = alertEvent(process.env);
    process.stdout.write(`${JSON.stringify({ plugin: 'pacemaker', vm: '', event, payload })}\n`);
    return;
  }
  const socket = values.socket ?? process.env['VESPER_SOCKET'] ?? DEFAULT_ALERT_SOCKET;
  process.stdout.write(`${await sendAlert({ env: process.env, socket, timeoutMs: ms })}\n`);
}

main().catch((err: unknown) => {
  const e = VesperError.from(err);
  process.stderr.write(`vesper: ${e.code}: ${e.message}\n`);
  process.exitCode = exitStatusFor(e.code);
});
