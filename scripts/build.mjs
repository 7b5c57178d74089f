// Bundles what leaves the host: the guest agent (one file, copied into guests) and each
// probe module (one ES module each, signed and pushed by the host at attach time); and the
// host's `vesper` command (CLI and daemon), whose npm dependencies stay in node_modules (two
// of them are native addons).
import { build } from 'esbuild';
import { copyFileSync, readdirSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist');
mkdirSync(out, { recursive: true });

// The remote scripts and the unit template of host/ssh/remote/ go into the bundle as text.
const common = {
  loader: { '.sh': 'text', '.service': 'text' },
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  logLevel: 'warning',
  legalComments: 'none',
};

// The agent's worker threads (guest-agent/worker/*.ts) are entries of their own, built first
// as CommonJS (what new Worker(text, { eval: true }) runs); their text goes into the agent
// bundle (guest-agent/worker/code.ts), which stays one file to copy into a guest.
const workerEntries = ['probe-host', 'main-watch'];
const workerCode = {};
for (const name of workerEntries) {
  const r = await build({
    ...common,
    format: 'cjs',
    entryPoints: [join(root, 'guest-agent/worker', `${name}.ts`)],
    outfile: join(out, 'guest-agent/workers', `${name}.cjs`),
    write: false,
  });
  const file = r.outputFiles[0];
  mkdirSync(dirname(file.path), { recursive: true });
  writeFileSync(file.path, file.text);
  workerCode[name] = file.text;
}

await build({
  ...common,
  entryPoints: [join(root, 'guest-agent/main.ts')],
  define: { __VESPER_WORKER_CODE__: JSON.stringify(workerCode) },
  outfile: join(out, 'guest-agent/vesper-agent.mjs'),
  // CommonJS dependencies (pino) call require() for Node built-ins.
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __vesperCreateRequire } from 'node:module'; const require = __vesperCreateRequire(import.meta.url);",
  },
  minifyWhitespace: false,
});

await build({
  ...common,
  entryPoints: [join(root, 'host/cli/vesper.ts')],
  outfile: join(out, 'host/vesper.mjs'),
  packages: 'external',
  banner: { js: '#!/usr/bin/env node' },
});

// The alert agent's sender alone (host/cli/alert-send.ts says why it is apart).
await build({
  ...common,
  entryPoints: [join(root, 'host/cli/alert-main.ts')],
  outfile: join(out, 'host/vesper-alert.mjs'),
  packages: 'external',
  banner: { js: '#!/usr/bin/env node' },
});

const probes = readdirSync(join(root, 'probes')).filter((d) => existsSync(join(root, 'probes', d, 'manifest.json')));
await Promise.all(
  probes.map((name) =>
    build({ ...common, entryPoints: [join(root, 'probes', name, 'index.ts')], outfile: join(out, 'probes', `${name}.mjs`) }),
  ),
);
// The catalogue's layout, as installed (host/assets.ts): <name>.mjs beside <name>.manifest.json.
for (const name of probes) copyFileSync(join(root, 'probes', name, 'manifest.json'), join(out, 'probes', `${name}.manifest.json`));
console.error(
  `built dist/host/vesper.mjs, dist/host/vesper-alert.mjs, dist/guest-agent/vesper-agent.mjs and ${probes.length} probe modules: ${probes.join(', ')}`,
);
