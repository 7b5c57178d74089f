// How the nats sink and `vesper fleet` connect: the server list and the credentials of a
// `kind: nats` entry (its keys: host/config/nats.ts) as nats.js takes them.
import { readFileSync } from 'node:fs';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { NatsParams } from '../config/nats.js';

export { parseNatsParams, natsParamsSchema, natsParamsShape, type NatsParams } from '../config/nats.js';

export function serverList(cfg: Pick<NatsParams, 'servers'>): string[] {
  return typeof cfg.servers === 'string' ? cfg.servers.split(',').map((s) => s.trim()) : cfg.servers;
}

/** What nats.js connect() takes for these credentials. */
export async function connectAuth(cfg: Pick<NatsParams, 'credentials'>): Promise<Record<string, unknown>> {
  const c = cfg.credentials;
  if (!c) return {};
  if ('user' in c) return { user: c.user, pass: c.password };
  if ('token' in c) return { token: c.token };
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(c.creds_file);
  } catch (err) {
    throw new VesperError(ErrorCode.KEY_MISSING, `sinks: nats creds_file ${c.creds_file}: ${(err as Error).message}`);
  }
  const { credsAuthenticator } = await import('@nats-io/transport-node');
  return { authenticator: credsAuthenticator(bytes) };
}
