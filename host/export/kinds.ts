// The sink kinds: a new kind registers its factory here. (h21n's copy holds the nats kind only;
// h20s's framework brings webhook, file, syslog and buildSinks: merged, the entries add up.)
import { hostname } from 'node:os';
import { NatsSink } from './nats-sink.js';
import { parseNatsParams } from './nats-config.js';
import type { ExportSink } from './sink.js';

export interface SinkContext {
  /** this host's name, as in every event's id */
  host: string;
}

/** What a factory is given: the entry's name and kind and its kind-specific keys. */
export interface SinkEntry {
  name: string;
  kind: string;
  params: Record<string, unknown>;
}

export type SinkFactory = (cfg: SinkEntry, ctx: SinkContext) => ExportSink;

export const SINK_KINDS: Record<string, SinkFactory> = {
  nats: (c, ctx) => new NatsSink(c.name, parseNatsParams(c.params, `sink ${c.name}`), ctx.host),
};

export function defaultSinkContext(): SinkContext {
  return { host: hostname() };
}
