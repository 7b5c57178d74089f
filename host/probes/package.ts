// Probe modules as the host pushes them: the bundle esbuild made of probes/<name>/, its
// manifest, and the host's signature over both.
import { sign } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { moduleDigest, signedBytes } from '../../proto/module-digest.js';
import type { ProbeManifest } from '../../contract/probe-api.js';
import { findAssets } from '../assets.js';
import type { HostKey } from '../keys.js';

export interface ProbeBundle {
  name: string;
  manifest: ProbeManifest;
  manifestBytes: Buffer;
  code: Buffer;
}

const MANIFEST_SUFFIX = '.manifest.json';

/** The probes of the catalogue (default: the install's or the built checkout's, see ../assets.ts). */
export function probeNames(dir = findAssets().probesDir): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new VesperError(
      ErrorCode.ASSETS_MISSING,
      `cannot read the probe catalogue ${dir}: ${(err as Error).message} (in a source checkout: npm run build)`,
    );
  }
  return names
    .filter((f) => f.endsWith(MANIFEST_SUFFIX))
    .map((f) => f.slice(0, -MANIFEST_SUFFIX.length))
    .sort();
}

export function readProbeBundle(name: string, dir = findAssets().probesDir): ProbeBundle {
  const mpath = join(dir, `${name}${MANIFEST_SUFFIX}`);
  const cpath = join(dir, `${name}.mjs`);
  if (!/^[a-z0-9][a-z0-9_-]*$/.test(name) || !existsSync(mpath))
    throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `no probe named ${name} (known: ${probeNames(dir).join(', ')})`);
  if (!existsSync(cpath)) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${name} has a manifest but no code (${cpath})`);
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
