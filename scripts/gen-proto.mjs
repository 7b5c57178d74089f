// Generates proto/gen/{vesper,api}.js (static protobufjs code) and their .d.ts from proto/*.proto.
// Static code, not reflection: the host decodes a million records a second, and static code
// gives the rest of the tree real TypeScript types for every message.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync, statSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'proto/gen');
mkdirSync(outDir, { recursive: true });
const bin = (name) => join(root, 'node_modules/.bin', name);

/** One .proto to static code; `rootName` keeps two schemas from sharing protobufjs' root. */
function generate(name, rootName, withJson) {
  const src = join(root, `proto/${name}.proto`);
  const js = join(outDir, `${name}.js`);
  const dts = join(outDir, `${name}.d.ts`);
  const json = join(outDir, `${name}.json`);
  const outs = withJson ? [js, dts, json] : [js, dts];
  if (outs.every((f) => existsSync(f) && statSync(f).mtimeMs >= statSync(src).mtimeMs)) return;
  execFileSync(
    bin('pbjs'),
    [
      '-t',
      'static-module',
      '-w',
      'es6',
      '-r',
      rootName,
      '--no-create',
      '--no-verify',
      '--no-convert',
      '--no-delimited',
      '--force-number',
      '-o',
      js,
      src,
    ],
    { stdio: 'inherit' },
  );
  // protobufjs/minimal is CommonJS whose exports Node's ESM loader cannot list by name; take
  // the default export instead of a namespace import.
  let code = readFileSync(js, 'utf8');
  code = code.replace(/import \* as \$protobuf from "protobufjs\/minimal";/, 'import $protobuf from "protobufjs/minimal.js";');
  writeFileSync(js, code);
  execFileSync(bin('pbts'), ['-o', dts, js], { stdio: 'inherit' });
  // The schema as data, for the agent's allocation-free record encoder (proto/fast-encode.ts).
  if (withJson) execFileSync(bin('pbjs'), ['-t', 'json', '-o', json, src], { stdio: 'inherit' });
}

generate('vesper', 'default', true);
generate('api', 'vesper_api', false);
