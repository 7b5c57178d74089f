// What the host's answer to a hello proves about its key (docs/trust.md). Both sides compute
// it the same way: the host signs the agent's per-hello nonce with the key it offers, the
// agent checks that signature before it pins the key (or compares it with the one it trusts).
// The domain string keeps this signature from meaning anything else (a module signature
// covers "vesper-probe-module-v1\0" + digest, never this).
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { keyId } from './module-digest.js';

export const ENROL_DOMAIN = Buffer.from('vesper-host-key-proof-v1\0');
export const ENROL_NONCE_BYTES = 32;

function proofBytes(nonce: Uint8Array, hostKeyDer: Uint8Array): Buffer {
  return Buffer.concat([ENROL_DOMAIN, Buffer.from(nonce), Buffer.from(hostKeyDer)]);
}

/** The host's side: its public key (SPKI DER) and the proof over the agent's nonce. */
export function offerHostKey(privateKey: KeyObject, publicKey: KeyObject, nonce: Uint8Array): { hostKey: Buffer; hostKeyProof: Buffer } {
  const hostKey = publicKey.export({ format: 'der', type: 'spki' });
  return { hostKey, hostKeyProof: sign(null, proofBytes(nonce, hostKey), privateKey) };
}

/**
 * The agent's side: the offered key, if it is an ed25519 key that signed this nonce; null
 * otherwise (with why).
 */
export function checkOfferedKey(
  hostKeyDer: Uint8Array,
  proof: Uint8Array,
  nonce: Uint8Array,
): { key: KeyObject; id: string; pem: string } | { why: string } {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(hostKeyDer), format: 'der', type: 'spki' });
  } catch (err) {
    return { why: `the offered host key is not a public key: ${(err as Error).message}` };
  }
  if (key.asymmetricKeyType !== 'ed25519') return { why: `the offered host key is ${key.asymmetricKeyType}, not ed25519` };
  if (nonce.length !== ENROL_NONCE_BYTES || !proof.length || !verify(null, proofBytes(nonce, hostKeyDer), key, Buffer.from(proof)))
    return { why: 'the host did not prove it holds the key it offers (its signature over this hello does not verify)' };
  return { key, id: keyId(key), pem: key.export({ format: 'pem', type: 'spki' }).toString() };
}
