// The `kind: nats` entry of `sinks:` and the bus options of `vesper fleet`: where the servers
// are, how to log in, and the JetStream stream that keeps the fleet's events. One schema for
// both, so a sink and a reader given the same entry find the same stream.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DURATION_HINT, SIZE_HINT, parseDuration, parseSize } from '../config/units.js';
import { DEFAULT_SUBJECT_PREFIX } from './nats-subject.js';

const duration = z.string().refine((s) => {
  try {
    parseDuration(s);
    return true;
  } catch {
    return false;
  }
}, `expected ${DURATION_HINT}`);
const size = z.union([z.number().int().nonnegative(), z.string()]).refine((s) => {
  try {
    if (typeof s === 'string') parseSize(s);
    return true;
  } catch {
    return false;
  }
}, `expected ${SIZE_HINT}`);
const token = z.string().regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only (a NATS subject token)');

/** The kind-specific keys of a `kind: nats` sink, as the file has them (snake_case). */
export const natsParamsShape = {
  /** nats://host:port URLs (a list, or one string with commas); the client picks among them */
  servers: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  subject_prefix: token.default(DEFAULT_SUBJECT_PREFIX),
  credentials: z
    .union([
      z.strictObject({ user: z.string(), password: z.string() }),
      z.strictObject({ token: z.string() }),
      /** a .creds file (JWT + NKey seed), as `nsc` writes it */
      z.strictObject({ creds_file: z.string() }),
    ])
    .optional(),
  stream: z
    .strictObject({
      name: token.default('VESPER'),
      /** create the stream when it is missing (with the settings below); false: it must exist */
      create: z.boolean().default(true),
      retention: z.enum(['limits', 'interest', 'workqueue']).default('limits'),
      replicas: z.number().int().min(1).max(5).default(1),
      /** a resend within this window is stored once (Nats-Msg-Id): longer than any outage you expect */
      duplicate_window: duration.default('10m'),
      max_age: duration.optional(),
      max_bytes: size.optional(),
      storage: z.enum(['file', 'memory']).default('file'),
    })
    .prefault({}),
  /** how long one publish waits for the stream's ack before the batch is retried */
  ack_timeout: duration.default('5s'),
};

export const natsParamsSchema = z.strictObject(natsParamsShape);
export type NatsParams = z.output<typeof natsParamsSchema>;

export function parseNatsParams(params: unknown, where = 'sinks: nats entry'): NatsParams {
  const r = natsParamsSchema.safeParse(params);
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join('.') || '(entry)'}: ${i.message}`).join('; ');
    throw new VesperError(ErrorCode.CONFIG_INVALID, `${where}: ${msg}`);
  }
  return r.data;
}

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
