// The kind-specific keys of a `kind: nats` sink (the fleet bus): where the servers are, how to
// log in, the JetStream stream that keeps the fleet's events. `vesper fleet` reads the same entry,
// so a sink and a reader given it find the same stream. The connection side is
// host/export/nats-config.ts.
import { z } from 'zod';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { DURATION_HINT, SIZE_HINT, parseDuration, parseSize } from './units.js';

/** The subjects' first token unless configured. */
export const DEFAULT_SUBJECT_PREFIX = 'vesper';

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
