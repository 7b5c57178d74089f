// The README is the front door and docs/ the manual: every link in them leads somewhere inside
// this repository, the README stays short, and it opens with the two set-up commands.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, exitStatusFor } from '../../proto/errors.js';
import { anchorsOf, linkProblems, linksOf, markdownFiles, openingCommands } from '../helpers/markdown-links.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const README_MAX_LINES = 150;

describe('the repository documentation', () => {
  it('has a README and pages under docs/', () => {
    const files = markdownFiles(root);
    expect(files[0]).toBe('README.md');
    expect(files.filter((f) => f.startsWith('docs/')).length).toBeGreaterThan(0);
  });

  it('every link in README.md and docs/ resolves to a file inside the repository, anchors to a heading', () => {
    expect(linkProblems(root)).toEqual([]);
  });

  it('every page under docs/ is linked from the README', () => {
    const linked = new Set(linksOf(readFileSync(join(root, 'README.md'), 'utf8')).map((l) => l.href.split('#')[0]));
    const pages = markdownFiles(root).filter((f) => f.startsWith('docs/'));
    expect(pages.filter((p) => !linked.has(p))).toEqual([]);
  });

  it(`the README is at most ${README_MAX_LINES} lines`, () => {
    const lines = readFileSync(join(root, 'README.md'), 'utf8').replace(/\n$/, '').split('\n').length;
    expect(lines).toBeLessThanOrEqual(README_MAX_LINES);
  });

  it('the README opens with the two set-up commands, before anything but its title', () => {
    const { before, commands } = openingCommands(readFileSync(join(root, 'README.md'), 'utf8'));
    expect(before).toEqual([]);
    expect(commands).toEqual(['bash scripts/demo.sh', 'npm test']);
  });
});

describe('docs/errors.md', () => {
  it('lists every code of proto/errors.ts, and nothing else, with the exit status exitStatusFor gives it', () => {
    const page = readFileSync(join(root, 'docs/errors.md'), 'utf8');
    const listed = [...page.matchAll(/^\| `(VSP_[A-Z0-9_]+)` +\| (\d+) +\|/gm)].map((m) => `${m[1]} ${m[2]}`);
    const catalogue = Object.values(ErrorCode).map((c) => `${c} ${exitStatusFor(c)}`);
    expect(listed.sort()).toEqual(catalogue.sort());
  });
});

describe('the link checker', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  const write = (path: string, text: string): void => {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), text);
  };

  it('reports a broken file, a way out of the checkout, a URL, a missing anchor and a build folder; takes the good ones', () => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-docs-links-'));
    write('.gitignore', 'dist/\n*.log\n');
    write('src/a.ts', '');
    write('dist/x.js', '');
    write('README.md', '# t\n\n[guide](docs/guide.md#two-words) [code](src/a.ts) [gone](docs/gone.md)\n');
    write(
      'docs/guide.md',
      [
        '# Guide',
        '',
        '## Two words',
        '',
        '[up](../README.md) [self](#guide) [out](../../etc/passwd) [web](https://example.org/)',
        '',
        '[abs](/etc/hosts) [bad anchor](../README.md#nowhere) [built](../dist/x.js)',
        '',
        '`[in code](nowhere.md)`',
        '',
        '```md',
        '[in a block](nowhere.md)',
        '```',
        '',
      ].join('\n'),
    );
    expect(linkProblems(dir)).toEqual([
      'README.md:3: docs/gone.md: no such file in the repository',
      'docs/guide.md:5: ../../etc/passwd: points outside the repository',
      'docs/guide.md:5: https://example.org/: points outside the repository (a URL)',
      'docs/guide.md:7: /etc/hosts: an absolute path; links are relative to the page',
      'docs/guide.md:7: ../README.md#nowhere: no heading makes the anchor #nowhere',
      'docs/guide.md:7: ../dist/x.js: points into a folder the build or the tests make (absent from a fresh clone)',
    ]);
  });

  it('makes anchors as GitHub does: punctuation dropped, code kept, repeats numbered', () => {
    expect([...anchorsOf('# The `vesper` CLI: a tour\n\n## Notes\n\n## Notes\n')]).toEqual(['the-vesper-cli-a-tour', 'notes', 'notes-1']);
  });

  it('sees a README that does not open with the set-up commands', () => {
    expect(openingCommands('# vesper\n\nIntro first.\n\n```sh\nbash scripts/demo.sh\nnpm test\n```\n').before).toEqual([
      'paragraph_open',
      'inline: Intro first.',
      'paragraph_close',
    ]);
    expect(openingCommands('# vesper\n\n```sh\nnpm test  # tests\nbash scripts/demo.sh\n```\n').commands).toEqual([
      'npm test',
      'bash scripts/demo.sh',
    ]);
  });
});
