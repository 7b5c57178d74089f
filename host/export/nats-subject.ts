// Subjects of the fleet bus: `vesper.<host>.<vm>.<plugin>.<event>`, one token per name. A NATS
// token may not be empty nor hold '.', '*', '>' or white space, so names are escaped reversibly:
// letters, digits, '_' and '-' stay; every other byte of the name's UTF-8 is `~XX` (hex, upper
// case); the empty name (a host's own events have vm '') is a lone `~`. Escaping is one-to-one,
// so `vm.a` and `vm_a` never share a subject, and a reader can filter on an exact VM.

export { DEFAULT_SUBJECT_PREFIX } from '../config/nats.js';
const PLAIN = /^[A-Za-z0-9_-]$/;

/** Names repeat (a fleet has few hosts, VMs, plugins, events): escaped once each, up to a bound. */
const tokens = new Map<string, string>();
const MAX_CACHED = 10_000;

export function subjectToken(name: string): string {
  const hit = tokens.get(name);
  if (hit !== undefined) return hit;
  const t = escapeName(name);
  if (tokens.size < MAX_CACHED) tokens.set(name, t);
  return t;
}

function escapeName(name: string): string {
  if (name === '') return '~';
  let out = '';
  for (const ch of name) {
    if (PLAIN.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += `~${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export function tokenName(token: string): string {
  if (token === '~') return '';
  const bytes: number[] = [];
  for (let i = 0; i < token.length; i++) {
    if (token[i] === '~' && /^[0-9A-F]{2}$/.test(token.slice(i + 1, i + 3))) {
      bytes.push(parseInt(token.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(...Buffer.from(token[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

export interface SubjectParts {
  host: string;
  vm: string;
  plugin: string;
  event: string;
}

export function eventSubject(prefix: string, p: SubjectParts): string {
  return `${prefix}.${subjectToken(p.host)}.${subjectToken(p.vm)}.${subjectToken(p.plugin)}.${subjectToken(p.event)}`;
}

/** The subject filter a fleet reader asks for: any host or VM when not given. */
export function subjectFilter(prefix: string, f: { host?: string; vm?: string }): string {
  const host = f.host !== undefined ? subjectToken(f.host) : '*';
  const vm = f.vm !== undefined ? subjectToken(f.vm) : '*';
  return `${prefix}.${host}.${vm}.*.*`;
}

/** A subject back into its names; null when it is not one of ours. */
export function parseSubject(prefix: string, subject: string): SubjectParts | null {
  if (!subject.startsWith(`${prefix}.`)) return null;
  const t = subject.slice(prefix.length + 1).split('.');
  if (t.length !== 4) return null;
  return { host: tokenName(t[0]!), vm: tokenName(t[1]!), plugin: tokenName(t[2]!), event: tokenName(t[3]!) };
}

/** Whether a subject is one of ours (`<prefix>` and four tokens), without decoding it: for every message read. */
export function isEventSubject(prefix: string, subject: string): boolean {
  if (subject.length <= prefix.length || subject[prefix.length] !== '.' || !subject.startsWith(prefix)) return false;
  let dots = 0;
  for (let i = prefix.length + 1; i < subject.length; i++) if (subject.charCodeAt(i) === 46) dots++;
  return dots === 3;
}
