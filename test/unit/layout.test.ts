// The tree's layering, checked on every product source file's imports: the product (host/,
// guest-agent/, probes/, proto/, contract/) stands apart from the test rigs; the host and the
// agent meet only in contract/ and proto/; the top-level folders, and the folders of host/,
// depend on each other one way only; no product file grows past MAX_LINES.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const PRODUCT = ['host', 'guest-agent', 'probes', 'proto', 'contract'];
/** generated protobuf code: not written by hand */
const GENERATED = 'proto/gen';
const MAX_LINES = 600;

interface SourceFile {
  /** path from the repository root, with / */
  path: string;
  lines: number;
  /** relative imports resolved to paths from the root; package imports left out */
  imports: string[];
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) {
      if (p !== GENERATED) out.push(...walk(p));
    } else if (/\.(ts|mts|mjs|js)$/.test(e.name) && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function parse(path: string): SourceFile {
  const text = readFileSync(join(ROOT, path), 'utf8');
  const { importedFiles } = ts.preProcessFile(text, true, true);
  const imports = importedFiles
    .map((f) => f.fileName)
    .filter((f) => f.startsWith('.'))
    .map((f) =>
      relative(ROOT, resolve(ROOT, dirname(path), f))
        .split(sep)
        .join('/'),
    );
  return { path, lines: text.split('\n').length - (text.endsWith('\n') ? 1 : 0), imports };
}

const files = PRODUCT.flatMap(walk).map(parse);

/** host/x/y.ts -> host/x (host/keys.ts is a node of its own); proto/frame.ts -> proto */
const topOf = (p: string): string => p.split('/')[0]!;
const hostFolderOf = (p: string): string | null => {
  const parts = p.split('/');
  return parts[0] === 'host' && parts.length >= 2 ? `host/${parts[1]}` : null;
};

function edges(group: (p: string) => string | null): Map<string, Map<string, string>> {
  // from -> to -> one example "file -> import", for the message
  const g = new Map<string, Map<string, string>>();
  for (const f of files)
    for (const i of f.imports) {
      const a = group(f.path);
      const b = group(i);
      if (a === null || b === null || a === b) continue;
      if (!g.has(a)) g.set(a, new Map());
      if (!g.get(a)!.has(b)) g.get(a)!.set(b, `${f.path} -> ${i}`);
    }
  return g;
}

/** Every cycle of the folder graph, each as "a -> b -> a (a/x.ts -> b/y.ts, ...)". */
function cycles(g: Map<string, Map<string, string>>): string[] {
  const found = new Set<string>();
  const out: string[] = [];
  const visit = (start: string, node: string, path: string[]): void => {
    for (const next of g.get(node)?.keys() ?? []) {
      if (next === start) {
        const ring = [...path, start];
        const key = [...path].sort().join(',');
        if (found.has(key)) continue;
        found.add(key);
        const why = ring.slice(0, -1).map((a, k) => g.get(a)!.get(ring[k + 1]!)!);
        out.push(`${ring.join(' -> ')} (${why.join('; ')})`);
      } else if (!path.includes(next) && next > start) visit(start, next, [...path, next]);
    }
  };
  for (const n of [...g.keys()].sort()) visit(n, n, [n]);
  return out;
}

const importsFrom = (fromTop: string, toPrefix: string): string[] =>
  files
    .filter((f) => f.path.startsWith(`${fromTop}/`))
    .flatMap((f) => f.imports.filter((i) => i.startsWith(toPrefix)).map((i) => `${f.path} -> ${i}`));

describe('the tree layout', () => {
  it('reads the product sources', () => {
    expect(files.length).toBeGreaterThan(50);
    expect(files.some((f) => f.path === 'host/daemon/ingest.ts' && f.imports.length > 0)).toBe(true);
  });

  it('host/ imports nothing from guest-agent/, and guest-agent/ nothing from host/', () => {
    expect(importsFrom('host', 'guest-agent/')).toEqual([]);
    expect(importsFrom('guest-agent', 'host/')).toEqual([]);
  });

  it('the probes reach the agent only through contract/', () => {
    expect([...importsFrom('probes', 'guest-agent/'), ...importsFrom('probes', 'host/')]).toEqual([]);
  });

  it('contract/ and proto/ import nothing from the host, the agent or the probes', () => {
    for (const top of ['contract', 'proto'])
      for (const other of ['host/', 'guest-agent/', 'probes/']) expect(importsFrom(top, other)).toEqual([]);
  });

  it('the product imports nothing from test/ (the rigs included)', () => {
    for (const top of PRODUCT) expect(importsFrom(top, 'test/')).toEqual([]);
  });

  it('host/channel/ and host/notify/ do not import each other', () => {
    expect(importsFrom('host/channel', 'host/notify/')).toEqual([]);
    expect(importsFrom('host/notify', 'host/channel/')).toEqual([]);
  });

  it('no import cycle between top-level folders', () => {
    expect(cycles(edges(topOf))).toEqual([]);
  });

  it('no import cycle between the folders of host/', () => {
    expect(cycles(edges(hostFolderOf))).toEqual([]);
  });

  it(`no product source file is over ${MAX_LINES} lines (but the known ones being split)`, () => {
    const over = files.filter((f) => f.lines > MAX_LINES).map((f) => `${f.path}: ${f.lines} lines`);
    expect(over).toEqual([]);
  });

  it('the cycle finder sees a cycle when there is one', () => {
    const g = new Map([
      ['a', new Map([['b', 'a/x -> b/y']])],
      ['b', new Map([['c', 'b/y -> c/z']])],
      ['c', new Map([['a', 'c/z -> a/x']])],
    ]);
    expect(cycles(g)).toEqual(['a -> b -> c -> a (a/x -> b/y; b/y -> c/z; c/z -> a/x)']);
  });
});
