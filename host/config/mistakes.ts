// Turning what is wrong with a config file into lines an operator can act on:
// `FILE:LINE:COL: key.path: what is wrong (and what is allowed)`, one per mistake, positions
// taken from the YAML document's nodes, unknown keys with the nearest known one.
import { isAlias, isMap, isPair, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';
import type { z } from 'zod';
import type { Problem } from './schema.js';

/** `daemon.log_level`, `filters[2].action`. */
export function keyPath(path: readonly (string | number)[]): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${seg}` : seg;
  return out || '(top level)';
}

/** Line and column (1-based) of a path in the document: the value's, or the key's, or the nearest parent's. */
export function positionOf(
  doc: Document,
  lc: LineCounter,
  path: readonly (string | number)[],
  atKey = false,
): { line: number; col: number } {
  let node: unknown = doc.contents;
  let pos = doc.contents?.range?.[0] ?? 0;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i]!;
    if (isAlias(node)) break; // the alias's own position is the best we can do
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      const keyStart = isScalar(pair.key) ? (pair.key.range?.[0] ?? pos) : pos;
      const value = pair.value as Node | null;
      const last = i === path.length - 1;
      const empty = value === null || (isScalar(value) && value.range != null && value.range[0] === value.range[1]);
      if (last && (atKey || empty)) return lc.linePos(keyStart);
      pos = keyStart;
      node = value;
      if (empty) break;
      pos = value?.range?.[0] ?? keyStart;
      continue;
    }
    if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg] as Node | undefined;
      if (!item) break;
      node = item;
      pos = item.range?.[0] ?? pos;
      continue;
    }
    break;
  }
  return lc.linePos(pos);
}

/** The value at a path of plain data, or undefined. */
export function valueAt(data: unknown, path: readonly (string | number)[]): unknown {
  let v = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/** The known key nearest to `word` (by edit distance, or the same letters without _ and case), or null. */
export function suggest(word: string, choices: readonly string[]): string | null {
  const norm = (s: string): string => s.toLowerCase().replace(/[-_\s]/g, '');
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of choices) {
    if (norm(c) === norm(word)) return c;
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  const allowed = Math.max(1, Math.floor(word.length / 3));
  return best !== null && bestD <= allowed ? best : null;
}

/** Edit distance where swapping two neighbouring letters counts as one edit ("stroe" is one from "store"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i]!;
      const up = d[i - 1]!;
      row[j] = Math.min(up[j]! + 1, row[j - 1]! + 1, up[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The keys an object schema allows at a path (through defaults, optionals, pipes and arrays). */
export function knownKeysAt(schema: z.ZodType, path: readonly (string | number)[]): string[] {
  let s: unknown = schema;
  const unwrap = (x: unknown): unknown => {
    for (let i = 0; i < 16; i++) {
      const def = (x as { def?: { type?: string; innerType?: unknown; in?: unknown } }).def;
      if (!def) return x;
      if (def.innerType !== undefined) x = def.innerType;
      else if (def.type === 'pipe') x = def.in;
      else return x;
    }
    return x;
  };
  for (const seg of path) {
    s = unwrap(s);
    const def = (s as { def?: { type?: string; shape?: Record<string, unknown>; element?: unknown; valueType?: unknown } }).def;
    if (def?.type === 'object' && typeof seg === 'string') s = def.shape?.[seg];
    else if (def?.type === 'array' && typeof seg === 'number') s = def.element;
    else if (def?.type === 'record' && typeof seg === 'string') s = def.valueType;
    else return [];
  }
  const def = (unwrap(s) as { def?: { type?: string; shape?: Record<string, unknown> } }).def;
  return def?.type === 'object' ? Object.keys(def.shape ?? {}) : [];
}

/** What a value looks like in a message: short, on one line. */
export function shown(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null (an empty value)';
  let s: string;
  if (typeof v === 'string') s = JSON.stringify(v);
  else if (Array.isArray(v)) s = 'a list';
  else if (typeof v === 'object') s = 'a mapping';
  // eslint-disable-next-line @typescript-eslint/no-base-to-string -- v is not an object here
  else s = String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** zod's issues as problems: one per unknown key, the received value added where it helps. */
export function problemsOfIssues(issues: readonly z.core.$ZodIssue[], raw: unknown, schema: z.ZodType): Problem[] {
  const out: Problem[] = [];
  for (const iss of issues) {
    const path = iss.path.filter((p): p is string | number => typeof p !== 'symbol');
    if (iss.code === 'unrecognized_keys') {
      const known = knownKeysAt(schema, path);
      for (const key of iss.keys) {
        const near = suggest(key, known);
        out.push({
          path: [...path, key],
          atKey: true,
          message: `unknown key${near ? ` (did you mean "${near}"?)` : ''}; allowed here: ${known.join(', ')}`,
        });
      }
      continue;
    }
    if (iss.code === 'invalid_key') {
      // A mapping's key (a VM name under pacemaker.vms): the key's own complaint, at the key.
      const key = path[path.length - 1];
      out.push({ path, atKey: true, message: `${iss.issues[0]?.message ?? iss.message}, got ${shown(String(key))}` });
      continue;
    }
    const value = valueAt(raw, path);
    let message = iss.message;
    if (iss.code === 'invalid_value' && typeof value === 'string') {
      const near = suggest(
        value,
        iss.values.filter((x): x is string => typeof x === 'string'),
      );
      if (near) message += ` (did you mean "${near}"?)`;
    }
    if (value === undefined && (iss.code === 'invalid_type' || iss.code === 'invalid_value' || iss.code === 'invalid_union'))
      message = `missing: ${message}`;
    else if (iss.code !== 'custom' || (value !== undefined && !message.includes(JSON.stringify(value)))) message += `, got ${shown(value)}`;
    out.push({ path, message });
  }
  return out;
}
