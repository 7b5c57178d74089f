import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TrustedKeys } from '../../guest-agent/modules/verify.js';
import { loadHostKey, loadOrCreateHostKey, type HostKey } from '../../host/keys.js';
import { signModule } from '../../host/probes/package.js';
import type { pb } from '../../proto/codec.js';
import { ErrorCode } from '../../proto/errors.js';
import { keyId, moduleDigest, signedBytes, SIGNATURE_DOMAIN } from '../../proto/module-digest.js';
import { caught } from '../helpers/caught.js';

let tmp: string;
let hostKey: HostKey;
let otherKey: HostKey;

const manifestBytes = Buffer.from(readFileSync(new URL('../../probes/heartbeat/manifest.json', import.meta.url)));
const code = Buffer.from('export default { name: "heartbeat", start() { return 1; } };\n');

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vesper-verify-'));
  hostKey = loadOrCreateHostKey(join(tmp, 'host'));
  otherKey = loadOrCreateHostKey(join(tmp, 'other'));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function trustHost(): TrustedKeys {
  const t = new TrustedKeys();
  t.add(hostKey.publicPem, 'host.pub');
  return t;
}

const signed = (): pb.IProbeModule => signModule({ manifestBytes, code }, hostKey);

describe('host keys', () => {
  it('loadOrCreateHostKey creates an ed25519 key pair once and loads the same one after', () => {
    const dir = join(tmp, 'host');
    expect(statSync(join(dir, 'host.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'host.pub'), 'utf8')).toBe(hostKey.publicPem);
    expect(hostKey.privateKey.asymmetricKeyType).toBe('ed25519');
    expect(hostKey.dir).toBe(dir);
    const again = loadOrCreateHostKey(dir);
    expect(again.id).toBe(hostKey.id);
    expect(again.publicPem).toBe(hostKey.publicPem);
    expect(otherKey.id).not.toBe(hostKey.id);
  });

  it('keyId is the first 16 hex digits of sha256 over the raw public key', () => {
    const jwk = hostKey.publicKey.export({ format: 'jwk' });
    const raw = Buffer.from(jwk.x!, 'base64url');
    expect(raw.length).toBe(32);
    const want = createHash('sha256').update(raw).digest('hex').slice(0, 16);
    expect(hostKey.id).toBe(want);
    expect(hostKey.id).toMatch(/^[0-9a-f]{16}$/);
    expect(keyId(hostKey.publicPem)).toBe(want);
  });

  it('loadHostKey refuses a key that is not ed25519, and a file that is not a key', () => {
    const dir = join(tmp, 'ec');
    mkdirSync(dir);
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    writeFileSync(join(dir, 'host.key'), ec.privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const e = caught(() => loadHostKey(join(dir, 'host.key')));
    expect(e.code).toBe(ErrorCode.KEY_INVALID);
    expect(e.message).toContain('is not an ed25519 key');
    writeFileSync(join(dir, 'junk.key'), 'not a key at all');
    expect(caught(() => loadHostKey(join(dir, 'junk.key'))).code).toBe(ErrorCode.KEY_INVALID);
    expect(caught(() => loadHostKey(join(dir, 'missing.key'))).code).toBe(ErrorCode.KEY_INVALID);
  });
});

describe('signModule', () => {
  it('signs the domain-separated digest of (u32be manifest length, manifest, code)', () => {
    const m = signed();
    const len = Buffer.alloc(4);
    len.writeUInt32BE(manifestBytes.length);
    const want = createHash('sha256')
      .update(Buffer.concat([len, manifestBytes, code]))
      .digest();
    expect(Buffer.from(m.digest!).equals(want)).toBe(true);
    expect(m.keyId).toBe(hostKey.id);
    expect(m.signature!.length).toBe(64);
    expect(SIGNATURE_DOMAIN.toString('latin1')).toBe('vesper-probe-module-v1\0');
    expect(signedBytes(want).equals(Buffer.concat([SIGNATURE_DOMAIN, want]))).toBe(true);
  });

  it('moduleDigest keeps manifest and code from being shifted into each other', () => {
    const a = moduleDigest(Buffer.from('ab'), Buffer.from('c'));
    const b = moduleDigest(Buffer.from('a'), Buffer.from('bc'));
    expect(a.equals(b)).toBe(false);
  });
});

describe('TrustedKeys.verifyModule', () => {
  it('accepts a module signed by the trusted key and returns its digest', () => {
    const m = signed();
    const digest = trustHost().verifyModule(m);
    expect(digest.equals(moduleDigest(manifestBytes, code))).toBe(true);
  });

  it('accepts a signed module without a key id by trying every trusted key', () => {
    const t = trustHost();
    t.add(otherKey.publicPem, 'other.pub');
    const m = { ...signed(), keyId: '' };
    expect(t.verifyModule(m).equals(moduleDigest(manifestBytes, code))).toBe(true);
  });

  it('refuses a module whose code changed by one byte: VSP_PROBE_DIGEST_MISMATCH', () => {
    const m = signed();
    const tampered = Buffer.from(code);
    tampered[10]! ^= 0x01;
    const e = caught(() => trustHost().verifyModule({ ...m, code: tampered }));
    expect(e.code).toBe(ErrorCode.PROBE_DIGEST_MISMATCH);
  });

  it('refuses a module whose manifest changed: VSP_PROBE_DIGEST_MISMATCH', () => {
    const m = signed();
    const tampered = Buffer.from(manifestBytes);
    tampered[tampered.length - 2]! ^= 0x20;
    expect(caught(() => trustHost().verifyModule({ ...m, manifest: tampered })).code).toBe(ErrorCode.PROBE_DIGEST_MISMATCH);
  });

  it('refuses a module with no digest: VSP_PROBE_DIGEST_MISMATCH', () => {
    const m = signed();
    expect(caught(() => trustHost().verifyModule({ ...m, digest: null })).code).toBe(ErrorCode.PROBE_DIGEST_MISMATCH);
  });

  it('refuses tampered code with a recomputed digest: VSP_PROBE_BAD_SIGNATURE', () => {
    const m = signed();
    const tampered = Buffer.from(code);
    tampered[10]! ^= 0x01;
    const e = caught(() => trustHost().verifyModule({ ...m, code: tampered, digest: moduleDigest(manifestBytes, tampered) }));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_SIGNATURE);
  });

  it('refuses a corrupted or truncated signature: VSP_PROBE_BAD_SIGNATURE', () => {
    const m = signed();
    const sig = Buffer.from(m.signature!);
    sig[0]! ^= 0x01;
    expect(caught(() => trustHost().verifyModule({ ...m, signature: sig })).code).toBe(ErrorCode.PROBE_BAD_SIGNATURE);
    expect(caught(() => trustHost().verifyModule({ ...m, signature: Buffer.from(m.signature!).subarray(0, 10) })).code).toBe(
      ErrorCode.PROBE_BAD_SIGNATURE,
    );
  });

  it('refuses an unsigned module: VSP_PROBE_UNSIGNED', () => {
    const m = signed();
    expect(caught(() => trustHost().verifyModule({ ...m, signature: null })).code).toBe(ErrorCode.PROBE_UNSIGNED);
    expect(caught(() => trustHost().verifyModule({ ...m, signature: new Uint8Array(0) })).code).toBe(ErrorCode.PROBE_UNSIGNED);
    // Unsigned wins over everything else that is wrong.
    expect(caught(() => trustHost().verifyModule({ manifest: manifestBytes, code })).code).toBe(ErrorCode.PROBE_UNSIGNED);
  });

  it('refuses a module signed by a key it does not trust: VSP_PROBE_UNKNOWN_KEY', () => {
    const m = signModule({ manifestBytes, code }, otherKey);
    const e = caught(() => trustHost().verifyModule(m));
    expect(e.code).toBe(ErrorCode.PROBE_UNKNOWN_KEY);
    expect(e.message).toContain(otherKey.id);
  });

  it('refuses a foreign signature that claims the trusted key id: VSP_PROBE_BAD_SIGNATURE', () => {
    const m = { ...signModule({ manifestBytes, code }, otherKey), keyId: hostKey.id };
    expect(caught(() => trustHost().verifyModule(m)).code).toBe(ErrorCode.PROBE_BAD_SIGNATURE);
    const anon = { ...signModule({ manifestBytes, code }, otherKey), keyId: '' };
    expect(caught(() => trustHost().verifyModule(anon)).code).toBe(ErrorCode.PROBE_BAD_SIGNATURE);
  });
});

describe('TrustedKeys loading', () => {
  it('loads host.pub from a key directory (and not the private key)', () => {
    const t = TrustedKeys.load(join(tmp, 'host'));
    expect(t.size).toBe(1);
    expect(t.ids()).toEqual([hostKey.id]);
    expect(t.verifyModule(signed()).length).toBe(32);
  });

  it('loads a single key file', () => {
    const t = TrustedKeys.load(join(tmp, 'other', 'host.pub'));
    expect(t.ids()).toEqual([otherKey.id]);
  });

  it('refuses a non-ed25519 public key file: VSP_KEY_INVALID', () => {
    const dir = join(tmp, 'rsa');
    mkdirSync(dir);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const file = join(dir, 'rsa.pem');
    writeFileSync(file, rsa.publicKey.export({ format: 'pem', type: 'spki' }));
    const e = caught(() => TrustedKeys.load(file));
    expect(e.code).toBe(ErrorCode.KEY_INVALID);
    expect(e.message).toBe(`${file} is not an ed25519 key`);
    expect(caught(() => TrustedKeys.load(dir)).code).toBe(ErrorCode.KEY_INVALID);
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    expect(caught(() => new TrustedKeys().add(ec.publicKey.export({ format: 'pem', type: 'spki' }).toString())).code).toBe(
      ErrorCode.KEY_INVALID,
    );
  });

  it('refuses text that is not a PEM key: VSP_KEY_INVALID', () => {
    const e = caught(() => new TrustedKeys().add('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n', 'bad.pem'));
    expect(e.code).toBe(ErrorCode.KEY_INVALID);
    expect(e.message).toMatch(/^bad\.pem is not a PEM public key/);
  });

  it('reports a missing path or an empty directory as VSP_KEY_MISSING', () => {
    expect(caught(() => TrustedKeys.load(join(tmp, 'nowhere'))).code).toBe(ErrorCode.KEY_MISSING);
    const empty = join(tmp, 'empty');
    mkdirSync(empty);
    writeFileSync(join(empty, 'readme.txt'), 'no keys here');
    const e = caught(() => TrustedKeys.load(empty));
    expect(e.code).toBe(ErrorCode.KEY_MISSING);
    expect(e.message).toBe(`no public key found in ${empty}`);
  });

  it('a trusted key id matches keyId() of the PEM', () => {
    const t = trustHost();
    expect(t.ids()).toEqual([keyId(createPublicKey(hostKey.publicPem))]);
  });
});
