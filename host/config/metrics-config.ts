// The config file's `metrics` section: where vesperd serves its Prometheus metrics. `listen` is
// `off` (the default), `HOST:PORT` (an HTTP endpoint, /metrics) or an absolute path (a unix
// socket, for a local proxy or an exporter that reads sockets). Off by default: the metrics
// name every VM and plugin and the endpoint has no authentication, so opening it is the
// operator's decision, and two vesperds on one host (or a test's) never fight over a port.
import { z } from 'zod';

export type MetricsListen = { kind: 'off' } | { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export const METRICS_LISTEN_HINT = "off, HOST:PORT (127.0.0.1:9477, [::1]:9477) or a unix socket's absolute path";

/** `off`, `HOST:PORT` or `/abs/path` as a MetricsListen; throws with what is wrong. */
export function parseMetricsListen(s: string): MetricsListen {
  if (s === 'off') return { kind: 'off' };
  if (s.startsWith('/')) {
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(s)) throw new Error('must not contain control characters');
    return { kind: 'unix', path: s };
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new Error(`must be ${METRICS_LISTEN_HINT}, got ${JSON.stringify(s)}`);
  return { kind: 'tcp', host: m[1] ?? m[2]!, port };
}

export function metricsListenText(l: MetricsListen): string {
  return l.kind === 'off' ? 'off' : l.kind === 'unix' ? l.path : l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
}

export const metricsSchema = z
  .strictObject(
    {
      listen: z
        .string({ error: `must be ${METRICS_LISTEN_HINT}` })
        .transform((s, ctx) => {
          try {
            return parseMetricsListen(s);
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: (err as Error).message });
            return z.NEVER;
          }
        })
        .prefault('off'),
    },
    { error: 'must be a mapping (keys: listen)' },
  )
  .prefault({});
