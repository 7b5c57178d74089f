// Host-key checking the way OpenSSH's known_hosts file does it, so that a host the user has
// already reached with `ssh` is trusted by vesper too, and one vesper accepted is trusted by
// `ssh`. Supports plain and hashed (`|1|salt|hmac`) host names, `[host]:port`, comma lists,
// `*`/`?` wildcards, `!` negation and `@revoked`; `@cert-authority` lines are skipped
// (vesper does not do host certificates).
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { knownHostsName } from './target.js';

export type HostKeyVerdict =
  | { status: 'known'; line: number }
  | { status: 'unknown' }
  | { status: 'changed'; line: number; knownFingerprint: string }
  | { status: 'revoked'; line: number };

/** `SHA256:…` as `ssh-keygen -lf` prints it, of a public key blob in SSH wire format. */
export function fingerprint(keyBlob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '');
}

/** The key type named inside an SSH public key blob (its first string). */
export function keyTypeOf(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return '';
  const n = keyBlob.readUInt32BE(0);
  return keyBlob.subarray(4, 4 + n).toString('latin1');
}

interface Entry {
  line: number;
  marker: '' | '@revoked' | '@cert-authority';
  patterns: string;
  type: string;
  key: Buffer;
}

function parse(text: string): Entry[] {
  const out: Entry[] = [];
  text.split('\n').forEach((raw, i) => {
    const l = raw.trim();
    if (!l || l.startsWith('#')) return;
    const f = l.split(/\s+/);
    let marker: Entry['marker'] = '';
    if (f[0] === '@revoked' || f[0] === '@cert-authority') marker = f.shift() as Entry['marker'];
    if (f.length < 3) return;
    out.push({ line: i + 1, marker, patterns: f[0]!, type: f[1]!, key: Buffer.from(f[2]!, 'base64') });
  });
  return out;
}

function wildcard(pattern: string, name: string): boolean {
  const re = new RegExp(
    '^' +
      pattern
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*/g, '.*')
        .replace(/\?/g, '.') +
      '$',
    'i',
  );
  return re.test(name);
}

/** Whether a known_hosts host field names this host (`name` as knownHostsName gives it). */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hmac] = field.split('|');
    if (!salt || !hmac) return false;
    return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hmac;
  }
  let matched = false;
  for (const p of field.split(',')) {
    if (p.startsWith('!')) {
      if (wildcard(p.slice(1), name)) return false;
    } else if (wildcard(p, name)) matched = true;
  }
  return matched;
}

export class KnownHosts {
  constructor(readonly path: string) {}

  private entries(): Entry[] {
    try {
      return parse(readFileSync(this.path, 'utf8'));
    } catch {
      return [];
    }
  }

  /** Key types this file holds for the host, so the handshake can prefer one we can check. */
  typesFor(host: string, port: number): string[] {
    const name = knownHostsName(host, port);
    return [
      ...new Set(
        this.entries()
          .filter((e) => e.marker === '' && hostFieldMatches(e.patterns, name))
          .map((e) => e.type),
      ),
    ];
  }

  check(host: string, port: number, keyBlob: Buffer): HostKeyVerdict {
    const name = knownHostsName(host, port);
    const type = keyTypeOf(keyBlob);
    const mine = this.entries().filter((e) => hostFieldMatches(e.patterns, name));
    const revoked = mine.find((e) => e.marker === '@revoked' && e.key.equals(keyBlob));
    if (revoked) return { status: 'revoked', line: revoked.line };
    const plain = mine.filter((e) => e.marker === '');
    const same = plain.find((e) => e.type === type && e.key.equals(keyBlob));
    if (same) return { status: 'known', line: same.line };
    // OpenSSH calls it changed only when a key of the same type is on file for the host.
    const other = plain.find((e) => e.type === type);
    if (other) return { status: 'changed', line: other.line, knownFingerprint: fingerprint(other.key) };
    return { status: 'unknown' };
  }

  /**
   * Records the host's key (the user accepted it): replaces lines of the same key type for
   * this host, appends otherwise. Host names are written hashed, as `HashKnownHosts yes` does.
   */
  accept(host: string, port: number, keyBlob: Buffer): void {
    const name = knownHostsName(host, port);
    const type = keyTypeOf(keyBlob);
    const salt = randomBytes(20);
    const hashed = `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
    const line = `${hashed} ${type} ${keyBlob.toString('base64')}\n`;
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    if (!existsSync(this.path)) {
      writeFileSync(this.path, line, { mode: 0o600 });
      return;
    }
    const drop = new Set(
      this.entries()
        .filter((e) => e.marker === '' && e.type === type && hostFieldMatches(e.patterns, name))
        .map((e) => e.line),
    );
    if (drop.size === 0) {
      const text = readFileSync(this.path, 'utf8');
      appendFileSync(this.path, (text.length && !text.endsWith('\n') ? '\n' : '') + line);
      return;
    }
    const kept = readFileSync(this.path, 'utf8')
      .split('\n')
      .filter((_, i) => !drop.has(i + 1));
    while (kept.length && kept[kept.length - 1] === '') kept.pop();
    writeFileSync(this.path, kept.join('\n') + (kept.length ? '\n' : '') + line);
  }
}
