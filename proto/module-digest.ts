// What a probe module's signature covers. Both sides compute it the same way: the host to
// sign, the agent to verify. The length prefix keeps manifest and code from being shifted
// into each other; the domain string keeps a module signature from meaning anything else.
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';

export const SIGNATURE_DOMAIN = Buffer.from('vesper-probe-module-v1\0');

export function moduleDigest(manifest: Uint8Array, code: Uint8Array): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(manifest.length);
  return createHash('sha256').update(len).update(manifest).update(code).digest();
}

export function signedBytes(digest: Uint8Array): Buffer {
  return Buffer.concat([SIGNATURE_DOMAIN, digest]);
}

/** First 16 hex digits of sha256 over the raw 32-byte ed25519 public key. */
export function keyId(pub: KeyObject | string): string {
  const key = typeof pub === 'string' ? createPublicKey(pub) : pub;
  const der = key.export({ format: 'der', type: 'spki' });
  const raw = der.subarray(der.length - 32);
  return createHash('sha256').update(raw).digest('hex').slice(0, 16);
}
