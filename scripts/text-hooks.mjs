// Node module hooks that import host/ssh/remote/*.sh and *.service as text (a default export
// string), as esbuild's text loader does in scripts/build.mjs and a plugin in
// vitest.config.ts: for running the sources under tsx
// (`tsx --import ./scripts/text-import.mjs`, as scripts/bench.sh does).
import { readFile } from 'node:fs/promises';
import { URL, fileURLToPath } from 'node:url';

const TEXT = /\.(sh|service)$/;

export async function load(url, context, nextLoad) {
  if (!TEXT.test(new URL(url).pathname)) return nextLoad(url, context);
  const text = await readFile(fileURLToPath(url), 'utf8');
  return { format: 'module', source: `export default ${JSON.stringify(text)};`, shortCircuit: true };
}
