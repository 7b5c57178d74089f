// Bundles what leaves the host: the guest agent (one file, copied into guests) and each
// probe module (one ES module each, signed and pushed by the host at attach time); and the
// host's `vesper` command (CLI and daemon), whose npm dependencies stay in node_modules (two
// of them are native addons).
import { build } from 'esbuild';
import { readdirSync, existsSync, mkdirSync } from 'node:fs';
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

await build({
  ...common,
  entryPoints: [join(root, 'guest-agent/main.ts')],
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
console.error(
  `built dist/host/vesper.mjs, dist/host/vesper-alert.mjs, dist/guest-agent/vesper-agent.mjs and ${probes.length} probe modules: ${probes.join(', ')}`,
);
