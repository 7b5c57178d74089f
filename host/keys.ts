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

/** Where vesperd keeps its key when it runs as root (as its systemd unit runs it). */
export const SYSTEM_KEY_DIR = '/etc/vesper';

export function defaultKeyDir(): string {
  return process.env.VESPER_KEY_DIR ?? (process.getuid?.() === 0 ? SYSTEM_KEY_DIR : join(process.env.HOME ?? '.', '.config/vesper'));
}

/** Loads host.key/host.pub from dir, creating them (0600) on first use. */
export function loadOrCreateHostKey(dir = defaultKeyDir()): HostKey {
  const priv = join(dir, 'host.key');
  const pub = join(dir, 'host.pub');
  if (!existsSync(priv)) {
    // The directory is readable (host.key itself is 0600): host.pub is public, and a user who
    // installs agents (`vesper agent install`) needs it.
    mkdirSync(dir, { recursive: true, mode: 0o755 });
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

/**
 * The key `vesper agent install` gives the agent: vesperd's, since the agent runs only modules
 * signed by the key the agent was given. Decided before any connection, creating nothing:
 * - VESPER_KEY_DIR, when set, names vesperd's key directory (the same variable vesperd reads);
 * - otherwise vesperd's own default as its unit runs it, as root: /etc/vesper. A user's
 *   ~/.config/vesper is never taken: it is the key of a vesperd run as that user, which the
 *   user must then name with VESPER_KEY_DIR.
 * When there is no key yet, only who may create it where vesperd will find it (root, or the
 * named directory) gets a plan to create it, carried out once the connection is up; anyone
 * else is refused (VSP_KEY_MISSING) with the reason and what to do.
 */
export type InstallKey = { dir: string; publicPem: string; create: false } | { dir: string; create: true };

export function installKeyPlan(o: { env?: NodeJS.ProcessEnv; uid?: number; systemDir?: string } = {}): InstallKey {
  const env = o.env ?? process.env;
  const uid = o.uid ?? process.getuid?.() ?? 0;
  const named = env.VESPER_KEY_DIR;
  const dir = named || (o.systemDir ?? SYSTEM_KEY_DIR);
  const how = named ? 'VESPER_KEY_DIR' : `vesperd's key directory when it runs as root, as its unit runs it`;
  const pubPath = join(dir, 'host.pub');
  const privPath = join(dir, 'host.key');
  const fix = named
    ? ''
    : ` Run the install as root, or point VESPER_KEY_DIR at the directory of the vesperd the agent is for (a vesperd not run as root keeps its key in ~/.config/vesper).`;
  const readPem = (path: string, missingOk: string[]): string | null => {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (missingOk.includes(code)) return null;
      throw new VesperError(
        ErrorCode.KEY_MISSING,
        `cannot read ${path} (vesperd's key, ${how}): ${code === 'EACCES' ? 'permission denied' : (err as Error).message}; nothing was installed.${code === 'EACCES' ? ` host.pub is public: vesperd's key directory may be readable by all (chmod 755 ${dir}); host.key stays 0600.` : ''}${fix}`,
      );
    }
  };
  // host.key first, as vesperd reads it (its host.pub is only a copy); host.pub when the
  // private key is not ours to read.
  const priv = readPem(privPath, ['ENOENT', 'EACCES']);
  if (priv !== null) return { dir, publicPem: publicOfPrivate(privPath, priv), create: false };
  const pub = readPem(pubPath, ['ENOENT']);
  if (pub !== null) {
    let key: KeyObject;
    try {
      key = createPublicKey(pub);
    } catch (err) {
      throw new VesperError(ErrorCode.KEY_INVALID, `${pubPath} is not a public key: ${(err as Error).message}`);
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new VesperError(ErrorCode.KEY_INVALID, `${pubPath} is not an ed25519 key`);
    return { dir, publicPem: key.export({ format: 'pem', type: 'spki' }).toString(), create: false };
  }
  if (existsSync(privPath)) {
    // host.key is there but not ours to read, and no host.pub beside it
    throw new VesperError(
      ErrorCode.KEY_MISSING,
      `cannot read vesperd's key ${privPath} (${how}) and there is no ${pubPath} beside it; nothing was installed.${fix}`,
    );
  }
  if (named || uid === 0) return { dir, create: true };
  throw new VesperError(
    ErrorCode.KEY_MISSING,
    `vesperd has no signing key yet: ${pubPath} does not exist (${how}; vesperd creates it on its first start), and as a user other than root this install does not make one that vesperd would not have; nothing was installed. Start vesperd once first.${fix}`,
  );
}

function publicOfPrivate(path: string, pem: string): string {
  let k: KeyObject;
  try {
    k = createPrivateKey(pem);
  } catch (err) {
    throw new VesperError(ErrorCode.KEY_INVALID, `cannot read the host signing key ${path}: ${(err as Error).message}`);
  }
  if (k.asymmetricKeyType !== 'ed25519') throw new VesperError(ErrorCode.KEY_INVALID, `${path} is not an ed25519 key`);
  return createPublicKey(k).export({ format: 'pem', type: 'spki' }).toString();
}
