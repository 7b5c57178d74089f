// Refuses any module the host's key did not sign, before a byte of it runs.
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { keyId, moduleDigest, signedBytes } from '../../proto/module-digest.js';

export class TrustedKeys {
  private readonly keys = new Map<string, KeyObject>();

  /** Loads one PEM public key file, or every *.pem / *.pub in a directory. */
  static load(path: string): TrustedKeys {
    const t = new TrustedKeys();
    let files: string[];
    try {
      files = statSync(path).isDirectory()
        ? readdirSync(path)
            .filter((f) => /\.(pem|pub)$/.test(f))
            .map((f) => join(path, f))
        : [path];
    } catch (err) {
      throw new VesperError(ErrorCode.KEY_MISSING, `cannot read the host key ${path}: ${(err as Error).message}`);
    }
    for (const f of files) t.add(readFileSync(f, 'utf8'), f);
    if (t.size === 0) throw new VesperError(ErrorCode.KEY_MISSING, `no public key found in ${path}`);
    return t;
  }

  add(pem: string, origin = 'key'): void {
    let key: KeyObject;
    try {
      key = createPublicKey(pem);
    } catch (err) {
      throw new VesperError(ErrorCode.KEY_INVALID, `${origin} is not a PEM public key: ${(err as Error).message}`);
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new VesperError(ErrorCode.KEY_INVALID, `${origin} is not an ed25519 key`);
    this.keys.set(keyId(key), key);
  }

  get size(): number {
    return this.keys.size;
  }

  ids(): string[] {
    return [...this.keys.keys()];
  }

  /** Checks digest and signature; returns the digest on success. */
  verifyModule(m: pb.IProbeModule): Buffer {
    const manifest = m.manifest ?? new Uint8Array();
    const code = m.code ?? new Uint8Array();
    if (!m.signature || m.signature.length === 0)
      throw new VesperError(ErrorCode.PROBE_UNSIGNED, 'probe module is not signed; the agent runs only modules signed by the host key');
    const digest = moduleDigest(manifest, code);
    if (!m.digest || !digest.equals(Buffer.from(m.digest)))
      throw new VesperError(ErrorCode.PROBE_DIGEST_MISMATCH, 'probe module content does not match its digest (tampered or corrupted)');
    const key = m.keyId ? this.keys.get(m.keyId) : undefined;
    const candidates = key ? [key] : [...this.keys.values()];
    if (m.keyId && !key)
      throw new VesperError(ErrorCode.PROBE_UNKNOWN_KEY, `probe module is signed by key ${m.keyId}, which this agent does not trust`);
    for (const k of candidates) if (verify(null, signedBytes(digest), k, Buffer.from(m.signature))) return digest;
    throw new VesperError(ErrorCode.PROBE_BAD_SIGNATURE, 'probe module signature does not verify against the host key');
  }
}
