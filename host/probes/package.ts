// Probe modules as the host pushes them: the bundle esbuild made of probes/<name>/, its
// manifest, and the host's signature over both.
import { sign } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { moduleDigest, signedBytes } from '../../proto/module-digest.js';
import type { ProbeManifest } from '../../contract/probe-api.js';
import type { HostKey } from '../keys.js';

/** The repository root, whether we run from source (tsx) or from dist/. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'probes'))) return dir;
    dir = dirname(dir);
  }
  throw new VesperError(ErrorCode.INTERNAL, 'cannot find the vesper project root');
}

export interface ProbeBundle {
  name: string;
  manifest: ProbeManifest;
  manifestBytes: Buffer;
  code: Buffer;
}

export function probeNames(root = projectRoot()): string[] {
  return readdirSync(join(root, 'probes')).filter((d) => existsSync(join(root, 'probes', d, 'manifest.json')));
}

export function readProbeBundle(name: string, root = projectRoot()): ProbeBundle {
  const mpath = join(root, 'probes', name, 'manifest.json');
  const cpath = join(root, 'dist', 'probes', `${name}.mjs`);
  if (!existsSync(mpath))
    throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `no probe named ${name} (known: ${probeNames(root).join(', ')})`);
  if (!existsSync(cpath)) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${name} is not built: run npm run build`);
  const manifestBytes = readFileSync(mpath);
  return { name, manifest: JSON.parse(manifestBytes.toString('utf8')) as ProbeManifest, manifestBytes, code: readFileSync(cpath) };
}

export function signModule(b: { manifestBytes: Uint8Array; code: Uint8Array }, key: HostKey): pb.IProbeModule {
  const digest = moduleDigest(b.manifestBytes, b.code);
  return {
    manifest: b.manifestBytes,
    code: b.code,
    digest,
    signature: sign(null, signedBytes(digest), key.privateKey),
    keyId: key.id,
  };
}
