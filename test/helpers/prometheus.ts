// A real Prometheus (Debian's `prometheus` package) for a test: its own config scraping one
// target every second, its own data directory, on a loopback port; queried over its HTTP API.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { waitFor } from './wait.js';

/** Why there is no Prometheus to run ('' when there is). */
export function whyNoPrometheus(): string {
  for (const b of ['prometheus', 'promtool'])
    if (spawnSync(b, ['--version']).status !== 0) return `${b} missing (Debian package prometheus; scripts/ensure-deps.sh installs it)`;
  return '';
}

/** A loopback TCP port free right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export interface Sample {
  metric: Record<string, string>;
  value: number;
}

export class Prometheus {
  private proc: ChildProcess | null = null;
  log = '';
  port = 0;

  constructor(
    private readonly dir: string,
    /** HOST:PORT of the target to scrape */
    private readonly target: string,
  ) {}

  async start(): Promise<void> {
    mkdirSync(join(this.dir, 'data'), { recursive: true });
    const config = join(this.dir, 'prometheus.yml');
    writeFileSync(
      config,
      `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: vesperd\n    static_configs: [{ targets: ['${this.target}'] }]\n`,
    );
    this.port = await freePort();
    const p = spawn(
      'prometheus',
      [
        `--config.file=${config}`,
        `--storage.tsdb.path=${join(this.dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${this.port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    p.stderr.on('data', (c: Buffer) => (this.log = (this.log + c.toString()).slice(-16_384)));
    this.proc = p;
    await waitFor(
      'Prometheus ready',
      async () =>
        p.exitCode === null &&
        (await fetch(`http://127.0.0.1:${this.port}/-/ready`)
          .then((r) => r.ok)
          .catch(() => false)),
      60_000,
      250,
    ).catch((e: Error) => {
      throw new Error(`${e.message}: ${this.log}`);
    });
  }

  /** An instant query's vector. */
  async query(q: string): Promise<Sample[]> {
    const r = await fetch(`http://127.0.0.1:${this.port}/api/v1/query?query=${encodeURIComponent(q)}`);
    const j = (await r.json()) as {
      status: string;
      error?: string;
      data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
    };
    if (j.status !== 'success') throw new Error(`query ${q}: ${j.error ?? r.status}`);
    return (j.data?.result ?? []).map((x) => ({ metric: x.metric, value: Number(x.value[1]) }));
  }

  /** The scrape target's health as Prometheus sees it. */
  async targetHealth(): Promise<string> {
    const r = (await (await fetch(`http://127.0.0.1:${this.port}/api/v1/targets`)).json()) as {
      data: { activeTargets: Array<{ health: string; lastError: string }> };
    };
    const t = r.data.activeTargets[0];
    return t ? `${t.health}${t.lastError ? `: ${t.lastError}` : ''}` : 'none';
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}
