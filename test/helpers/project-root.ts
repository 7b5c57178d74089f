// The source checkout's root, for the tests, benchmarks and rigs (which live in the checkout),
// whether they run from source (tsx, vitest) or from a bundle under dist/. The product finds its
// own files through host/assets.ts, never through this.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'probes'))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`cannot find the vesper checkout above ${fileURLToPath(import.meta.url)}`);
}
