// The source of the agent's worker threads (probe-host.ts, main-watch.ts). In the bundle,
// scripts/build.mjs builds each as an entry of its own and defines __VESPER_WORKER_CODE__
// with their text, so that the agent stays one file. Run from source (tests, tsx), the entry
// is bundled here, once, with esbuild (a dev dependency).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

declare const __VESPER_WORKER_CODE__: Record<string, string> | undefined;

export type WorkerEntry = 'probe-host' | 'main-watch';

const built = new Map<WorkerEntry, string>();

/** The CommonJS text a Worker evaluates (new Worker(text, { eval: true })). */
export function workerCode(entry: WorkerEntry): string {
  if (typeof __VESPER_WORKER_CODE__ !== 'undefined') return __VESPER_WORKER_CODE__[entry]!;
  let code = built.get(entry);
  if (code === undefined) {
    const load = createRequire(import.meta.url);
    const esbuild = load('esbuild') as typeof import('esbuild');
    const r = esbuild.buildSync({
      entryPoints: [fileURLToPath(new URL(`./${entry}.ts`, import.meta.url))],
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      write: false,
      logLevel: 'silent',
    });
    code = r.outputFiles[0]!.text;
    built.set(entry, code);
  }
  return code;
}
