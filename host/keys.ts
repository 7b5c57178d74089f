// The host's ed25519 signing key. The private half signs probe modules; the public half is
// provisioned with every agent, which then runs nothing else.
import { generateKeyPairSync, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ErrorCode, VesperError } from '../proto/errors.js';
import { keyId } from '../proto/module-digest.js';

export interface HostKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicPem: string;
  id: string;
  dir: string;
}

export function defaultKeyDir(): string {
  return process.env.VESPER_KEY_DIR ?? (process.getuid?.() === 0 ? '/etc/vesper' : join(process.env.HOME ?? '.', '.config/vesper'));
}

/** Loads host.key/host.pub from dir, creating them (0600) on first use. */
export function loadOrCreateHostKey(dir = defaultKeyDir()): HostKey {
  const priv = join(dir, 'host.key');
  const pub = join(dir, 'host.pub');
  if (!existsSync(priv)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const kp = generateKeyPairSync('ed25519');
    writeFileSync(priv, kp.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    writeFileSync(pub, kp.publicKey.export({ format: 'pem', type: 'spki' }), { mode: 0o644 });
  }
  return loadHostKey(priv);
}

export function loadHostKey(privPath: string): HostKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(readFileSync(privPath, 'utf8'));
  } catch (err) {
    throw new VesperError(ErrorCode.KEY_INVALID, `cannot read the host signing key ${privPath}: ${(err as Error).message}`);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new VesperError(ErrorCode.KEY_INVALID, `${privPath} is not an ed25519 key`);
  const publicKey = createPublicKey(privateKey);
  const publicPem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
  const dir = dirname(privPath);
  const pubPath = join(dir, 'host.pub');
  if (!existsSync(pubPath)) writeFileSync(pubPath, publicPem, { mode: 0o644 });
  return { privateKey, publicKey, publicPem, id: keyId(publicKey), dir };
}
