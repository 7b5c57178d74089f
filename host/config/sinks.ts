// The `sinks:` list of vesper.yaml: every entry has a unique `name`, a `kind` and the kind's own
// keys, plus how it is run (batching, timeout, retry, where a new sink starts). Parsed here into
// SinkConfig; host/export/kinds.ts builds the sinks from it (buildSinks), host/export/exporter.ts
// runs them.
import { z } from 'zod';
import { DURATION_HINT, SIZE_HINT, parseDuration, parseSize } from './units.js';
import { natsParamsShape } from './nats.js';

/** How the exporter runs one sink. */
export interface RunnerOptions {
  /** most events handed over in one deliver() */
  batchMax: number;
  /** ms a woken runner waits for more events before it reads a batch smaller than batchMax */
  linger: number;
  /** ms a deliver() may take before it is aborted (and retried) */
  timeout: number;
  /** first and largest retry delay, ms */
  retryMin: number;
  retryMax: number;
  /** where a sink without a saved cursor starts: events stored from now on, or every stored one */
  start: 'now' | 'oldest';
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

function duration(def: string, minMs: number) {
  return z
    .string({ error: `must be ${DURATION_HINT}` })
    .transform((s, ctx) => {
      try {
        const ms = parseDuration(s);
        if (ms >= minMs) return ms;
        ctx.addIssue({ code: 'custom', message: `must be at least ${minMs} ms, got ${JSON.stringify(s)}` });
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
      return z.NEVER;
    })
    .prefault(def);
}

function size(def: string) {
  return z
    .union([z.string(), z.number()], { error: `must be ${SIZE_HINT}` })
    .transform((s, ctx) => {
      try {
        const bytes = parseSize(s);
        if (bytes >= 4096) return bytes;
        ctx.addIssue({ code: 'custom', message: `must be at least 4KiB, got ${JSON.stringify(s)}` });
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
      return z.NEVER;
    })
    .prefault(def);
}

const absolutePath = (what: string) =>
  z.string({ error: `must be ${what} (an absolute path)` }).refine((s) => s.startsWith('/') && !CONTROL.test(s), {
    error: `must be ${what} (an absolute path, starting with /)`,
  });

const common = {
  name: z
    .string({ error: 'must be a sink name (letters, digits, . _ -)' })
    .refine((s) => /^[A-Za-z0-9_.-]{1,64}$/.test(s), { error: 'must be a sink name (1-64 letters, digits, . _ -)' }),
  batch_max: z
    .number({ error: 'must be a whole number from 1 to 100000' })
    .int({ error: 'must be a whole number from 1 to 100000' })
    .min(1, { error: 'must be a whole number from 1 to 100000' })
    .max(100_000, { error: 'must be a whole number from 1 to 100000' })
    .prefault(1000),
  linger: duration('20ms', 0),
  timeout: duration('10s', 10),
  retry_min: duration('200ms', 1),
  retry_max: duration('30s', 1),
  start: z.enum(['now', 'oldest'], { error: 'must be now or oldest' }).prefault('now'),
};

const strict = <T extends z.core.$ZodLooseShape>(what: string, shape: T) =>
  z.strictObject(shape, { error: `must be ${what} (keys: ${Object.keys(shape).join(', ')})` });

export const webhookSinkSchema = strict('a webhook sink', {
  ...common,
  kind: z.literal('webhook'),
  url: z
    .string({ error: 'must be an http:// or https:// URL' })
    .refine((s) => URL.canParse(s) && /^https?:$/.test(new URL(s).protocol), { error: 'must be an http:// or https:// URL' }),
  headers: z
    .record(z.string(), z.string({ error: 'must be a string' }), { error: 'must be a mapping of header names to values' })
    .prefault({}),
});

export const fileSinkSchema = strict('a file sink', {
  ...common,
  kind: z.literal('file'),
  path: absolutePath('the NDJSON file'),
  max_size: size('100MiB'),
  keep: z
    .number({ error: 'must be a whole number from 1 to 1000' })
    .int({ error: 'must be a whole number from 1 to 1000' })
    .min(1, { error: 'must be a whole number from 1 to 1000' })
    .max(1000, { error: 'must be a whole number from 1 to 1000' })
    .prefault(5),
});

export const SYSLOG_FACILITIES = [
  'kern', 'user', 'mail', 'daemon', 'auth', 'syslog', 'lpr', 'news', 'uucp', 'cron', 'authpriv', 'ftp',
  'ntp', 'audit', 'alert', 'clock', 'local0', 'local1', 'local2', 'local3', 'local4', 'local5', 'local6', 'local7',
] as const; // prettier-ignore

export const syslogSinkSchema = strict('a syslog sink', {
  ...common,
  kind: z.literal('syslog'),
  transport: z.enum(['tcp', 'udp', 'unix'], { error: 'must be tcp, udp or unix' }).prefault('tcp'),
  /** host:port for tcp and udp; a socket path for unix (a stream socket, octet-counted) */
  address: z.string({ error: 'must be host:port (tcp, udp) or a socket path (unix)' }).refine((s) => !CONTROL.test(s) && s !== '', {
    error: 'must be host:port (tcp, udp) or a socket path (unix)',
  }),
  facility: z.enum(SYSLOG_FACILITIES, { error: `must be one of ${SYSLOG_FACILITIES.join(', ')}` }).prefault('daemon'),
  app_name: z
    .string({ error: 'must be 1-48 printable ASCII characters' })
    .refine((s) => /^[!-~]{1,48}$/.test(s), { error: 'must be 1-48 printable ASCII characters' })
    .prefault('vesper'),
});

/** The fleet bus: NATS JetStream (host/config/nats.ts has the keys and their defaults). */
export const natsSinkSchema = strict('a nats sink', { ...common, kind: z.literal('nats'), ...natsParamsShape });

/** A sink's kind-specific keys, as the file has them (snake_case). */
export const sinkSchema = z.discriminatedUnion('kind', [webhookSinkSchema, fileSinkSchema, syslogSinkSchema, natsSinkSchema], {
  error: 'must be a sink with a kind: webhook, file, syslog or nats',
});

export const sinksSchema = z
  .array(sinkSchema, { error: 'must be a list of sinks' })
  .refine((list) => new Set(list.map((s) => s.name)).size === list.length, { error: 'sink names must be unique' })
  .prefault([]);

export type SinkFileConfig = z.output<typeof sinkSchema>;

export interface SinkConfig {
  name: string;
  kind: string;
  run: RunnerOptions;
  /** the kind's own keys, as written (snake_case) */
  params: Record<string, unknown>;
}

export function toSinkConfig(s: SinkFileConfig): SinkConfig {
  const { name, kind, batch_max, linger, timeout, retry_min, retry_max, start, ...params } = s;
  return {
    name,
    kind,
    run: { batchMax: batch_max, linger, timeout, retryMin: retry_min, retryMax: Math.max(retry_min, retry_max), start },
    params,
  };
}
