// Generates proto/gen/vesper.js (static protobufjs code) and its .d.ts from proto/vesper.proto.
// Static code, not reflection: the host decodes a million records a second, and static code
// gives the rest of the tree real TypeScript types for every message.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync, statSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'proto/vesper.proto');
const outDir = join(root, 'proto/gen');
const js = join(outDir, 'vesper.js');
const dts = join(outDir, 'vesper.d.ts');
const json = join(outDir, 'vesper.json');
mkdirSync(outDir, { recursive: true });

if ([js, dts, json].every((f) => existsSync(f) && statSync(f).mtimeMs >= statSync(src).mtimeMs)) process.exit(0);

const bin = (name) => join(root, 'node_modules/.bin', name);
execFileSync(
  bin('pbjs'),
  ['-t', 'static-module', '-w', 'es6', '--no-create', '--no-verify', '--no-convert', '--no-delimited', '--force-number', '-o', js, src],
  { stdio: 'inherit' },
);
// protobufjs/minimal is CommonJS whose exports Node's ESM loader cannot list by name; take
// the default export instead of a namespace import.
let code = readFileSync(js, 'utf8');
code = code.replace(/import \* as \$protobuf from "protobufjs\/minimal";/, 'import $protobuf from "protobufjs/minimal.js";');
writeFileSync(js, code);
execFileSync(bin('pbts'), ['-o', dts, js], { stdio: 'inherit' });
// The schema as data, for the agent's allocation-free record encoder (proto/fast-encode.ts).
execFileSync(bin('pbjs'), ['-t', 'json', '-o', json, src], { stdio: 'inherit' });
