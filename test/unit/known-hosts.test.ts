// known_hosts read the way OpenSSH reads it: hashed names, [host]:port, comma lists with
// wildcards and negation, @revoked, and accept() that replaces a changed key in place.
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fingerprint, hostFieldMatches, keyTypeOf, KnownHosts } from '../../host/ssh/known-hosts.js';
import { generateKey } from '../helpers/ssh2-server.js';

const dir = mkdtempSync(join(tmpdir(), 'vesper-known-hosts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(text: string): KnownHosts {
  const p = join(dir, `kh.${n++}`);
  writeFileSync(p, text);
  return new KnownHosts(p);
}

const a = generateKey().blob;
const b = generateKey().blob;
const b64 = (k: Buffer): string => k.toString('base64');

function hashed(name: string, salt = Buffer.from('0123456789abcdefghij')): string {
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
}

describe('known_hosts', () => {
  it('reads the key type out of the blob and prints the fingerprint as ssh-keygen does', () => {
    expect(keyTypeOf(a)).toBe('ssh-ed25519');
    expect(fingerprint(a)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('matches hashed host names (|1|salt|hmac), and only the name that was hashed', () => {
    const kh = file(`${hashed('web1.example')} ssh-ed25519 ${b64(a)}\n`);
    expect(kh.check('web1.example', 22, a)).toEqual({ status: 'known', line: 1 });
    expect(kh.check('web2.example', 22, a).status).toBe('unknown');
    expect(kh.check('web1.example', 2222, a).status).toBe('unknown'); // another port is another name
  });

  it('a non-standard port is filed as [host]:port, plain or hashed; port 22 as the bare host', () => {
    const kh = file(
      `[10.0.0.5]:2222 ssh-ed25519 ${b64(a)}\n${hashed('[db.example]:2200')} ssh-ed25519 ${b64(b)}\n10.0.0.5 ssh-ed25519 ${b64(b)}\n`,
    );
    expect(kh.check('10.0.0.5', 2222, a)).toEqual({ status: 'known', line: 1 });
    expect(kh.check('db.example', 2200, b)).toEqual({ status: 'known', line: 2 });
    expect(kh.check('10.0.0.5', 22, b)).toEqual({ status: 'known', line: 3 });
    expect(kh.check('10.0.0.5', 22, a)).toMatchObject({ status: 'changed', line: 3 });
  });

  it('comma lists, wildcards and negation: a negated match excludes the host even when another pattern matches', () => {
    expect(hostFieldMatches('*.example,!secret.example', 'web.example')).toBe(true);
    expect(hostFieldMatches('*.example,!secret.example', 'secret.example')).toBe(false);
    expect(hostFieldMatches('web?.example', 'web7.example')).toBe(true);
    expect(hostFieldMatches('web?.example', 'web17.example')).toBe(false);
    const kh = file(`*.example,!secret.example ssh-ed25519 ${b64(a)}\n`);
    expect(kh.check('web.example', 22, a).status).toBe('known');
    expect(kh.check('secret.example', 22, a).status).toBe('unknown');
  });

  it('@revoked refuses a key even when another line trusts it; @cert-authority lines are not host keys', () => {
    const kh = file(`host.example ssh-ed25519 ${b64(a)}\n@revoked * ssh-ed25519 ${b64(a)}\n@cert-authority * ssh-ed25519 ${b64(b)}\n`);
    expect(kh.check('host.example', 22, a)).toEqual({ status: 'revoked', line: 2 });
    expect(kh.check('other.example', 22, b).status).toBe('unknown');
  });

  it('a different key of the same type is "changed", with the line and the fingerprint on file', () => {
    const kh = file(`# comment\n\nhost.example ssh-ed25519 ${b64(a)}\n`);
    expect(kh.check('host.example', 22, b)).toEqual({ status: 'changed', line: 3, knownFingerprint: fingerprint(a) });
    expect(kh.typesFor('host.example', 22)).toEqual(['ssh-ed25519']);
  });

  it('accept() replaces a changed key in place (keeping other lines) and writes the name hashed', () => {
    const kh = file(`# keep me\nhost.example ssh-ed25519 ${b64(a)}\nother.example ssh-ed25519 ${b64(a)}\n`);
    kh.accept('host.example', 22, b);
    const lines = readFileSync(kh.path, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toBe('# keep me');
    expect(lines[1]).toBe(`other.example ssh-ed25519 ${b64(a)}`);
    expect(lines[2]).toMatch(new RegExp(`^\\|1\\|[^ ]+ ssh-ed25519 ${b64(b).replace(/[+/]/g, '\\$&')}$`));
    expect(kh.check('host.example', 22, b).status).toBe('known');
    expect(kh.check('host.example', 22, a).status).toBe('changed');
    expect(kh.check('other.example', 22, a).status).toBe('known');
  });

  it('accept() creates a missing file (and its directory) and appends to one without a final newline', () => {
    const fresh = new KnownHosts(join(dir, 'sub', 'dir', 'known_hosts'));
    fresh.accept('127.0.0.1', 2022, a);
    expect(fresh.check('127.0.0.1', 2022, a).status).toBe('known');
    const kh = file(`x.example ssh-ed25519 ${b64(a)}`);
    kh.accept('y.example', 22, b);
    expect(readFileSync(kh.path, 'utf8').split('\n')).toHaveLength(3);
    expect(kh.check('x.example', 22, a).status).toBe('known');
    expect(kh.check('y.example', 22, b).status).toBe('known');
  });
});
