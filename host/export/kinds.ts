// The sink kinds and buildSinks(), the one place sinks are made from the configuration (at
// start and on a reload). A new kind registers its factory here.
import { hostname } from 'node:os';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { SinkConfig } from '../config/sinks.js';
import type { SinkSpec } from './exporter.js';
import { FileSink, type FileParams } from './file.js';
import { parseNatsParams } from './nats-config.js';
import { NatsSink } from './nats-sink.js';
import type { ExportSink } from './sink.js';
import { SyslogSink, type SyslogParams } from './syslog.js';
import { WebhookSink, type WebhookParams } from './webhook.js';

export interface SinkContext {
  /** this host's name, as in every event's id */
  host: string;
}

export type SinkFactory = (cfg: SinkConfig, ctx: SinkContext) => ExportSink;

export const SINK_KINDS: Record<string, SinkFactory> = {
  webhook: (c, ctx) => new WebhookSink(c.name, c.params as unknown as WebhookParams, ctx.host),
  file: (c) => new FileSink(c.name, c.params as unknown as FileParams),
  syslog: (c) => new SyslogSink(c.name, c.params as unknown as SyslogParams),
  nats: (c, ctx) => new NatsSink(c.name, parseNatsParams(c.params, `sink ${c.name}`), ctx.host),
};

export function defaultSinkContext(): SinkContext {
  return { host: hostname() };
}

/** The configured sinks, made (nothing is connected or opened until the first batch). */
export function buildSinks(cfg: readonly SinkConfig[], ctx: SinkContext = defaultSinkContext()): SinkSpec[] {
  return cfg.map((c) => {
    const make = SINK_KINDS[c.kind];
    if (!make)
      throw new VesperError(
        ErrorCode.CONFIG_INVALID,
        `sink ${c.name}: unknown kind ${c.kind} (known: ${Object.keys(SINK_KINDS).join(', ')})`,
      );
    return { sink: make(c, ctx), options: c.run };
  });
}
