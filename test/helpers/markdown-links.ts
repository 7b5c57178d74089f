// The repository's Markdown as a reader follows it: every link in README.md and docs/**/*.md
// must lead to a file or folder of the checkout (not one the build or the tests make, which a
// fresh clone lacks), and an anchor must name a heading of its page. Nothing may point outside
// the repository: no URL, no absolute path, no `../` past the root. Links are read with
// markdown-it, so a link inside a code span or a code block is text, as on GitHub.
import MarkdownIt from 'markdown-it';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

const md = new MarkdownIt({ html: true });
type Token = ReturnType<typeof md.parse>[number];

export interface Link {
  href: string;
  line: number;
}

/** Every link and image of a Markdown text, with the line it starts on (1-based). */
export function linksOf(text: string): Link[] {
  const out: Link[] = [];
  for (const block of md.parse(text, {})) {
    const line = (block.map?.[0] ?? 0) + 1;
    for (const t of block.children ?? []) {
      const href = t.type === 'link_open' ? t.attrGet('href') : t.type === 'image' ? t.attrGet('src') : null;
      if (href !== null) out.push({ href, line });
    }
  }
  return out;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
export function slugOf(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '')
    .replace(/ /g, '-');
}

/** The anchors a page's headings make, a repeated heading numbered as GitHub does (-1, -2). */
export function anchorsOf(text: string): Set<string> {
  const tokens = md.parse(text, {});
  const seen = new Map<string, number>();
  const out = new Set<string>();
  tokens.forEach((t, i) => {
    if (t.type !== 'heading_open') return;
    const words = (tokens[i + 1]?.children ?? []).filter((c) => c.type === 'text' || c.type === 'code_inline').map((c) => c.content);
    const base = slugOf(words.join(''));
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  });
  return out;
}

/** Top-level folders the checkout's .gitignore names: made by the build or the tests, absent from a fresh clone. */
function ignoredFolders(root: string): string[] {
  const file = join(root, '.gitignore');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#') && !/[*?[!]/.test(l))
    .map((l) => l.replace(/^\/|\/$/g, ''));
}

/** README.md and every .md file under docs/, as paths relative to root. */
export function markdownFiles(root: string): string[] {
  const files = existsSync(join(root, 'README.md')) ? ['README.md'] : [];
  const walk = (dir: string): void => {
    if (!existsSync(join(root, dir))) return;
    for (const e of readdirSync(join(root, dir), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(path);
      else if (e.name.endsWith('.md')) files.push(path);
    }
  };
  walk('docs');
  return files;
}

/** What is wrong with the links of these files, one line per problem: `FILE:LINE: HREF: why`. */
export function linkProblems(root: string, files = markdownFiles(root)): string[] {
  const problems: string[] = [];
  const ignored = ignoredFolders(root);
  const anchorCache = new Map<string, Set<string>>();
  const anchors = (abs: string): Set<string> => {
    let a = anchorCache.get(abs);
    if (!a) anchorCache.set(abs, (a = anchorsOf(readFileSync(abs, 'utf8'))));
    return a;
  };
  for (const file of files) {
    const abs = resolve(root, file);
    for (const { href, line } of linksOf(readFileSync(abs, 'utf8'))) {
      const say = (why: string): void => void problems.push(`${file}:${line}: ${href}: ${why}`);
      if (/^[a-z][a-z0-9+.-]*:/i.test(href) || href.startsWith('//')) {
        say('points outside the repository (a URL)');
        continue;
      }
      if (href.startsWith('/')) {
        say('an absolute path; links are relative to the page');
        continue;
      }
      const hash = href.indexOf('#');
      const pathPart = decodeURIComponent(hash < 0 ? href : href.slice(0, hash));
      const anchor = hash < 0 ? '' : decodeURIComponent(href.slice(hash + 1));
      const target = pathPart === '' ? abs : resolve(dirname(abs), pathPart);
      const rel = relative(resolve(root), target);
      if (rel === '..' || rel.startsWith(`..${sep}`) || resolve(root, rel) !== target) {
        say('points outside the repository');
        continue;
      }
      const top = rel.split(sep)[0] ?? '';
      if (ignored.some((g) => rel === g || rel.startsWith(`${g}${sep}`) || top === g)) {
        say('points into a folder the build or the tests make (absent from a fresh clone)');
        continue;
      }
      if (!existsSync(target)) {
        say('no such file in the repository');
        continue;
      }
      if (anchor) {
        if (!target.endsWith('.md')) say('an anchor into a file that is not Markdown');
        else if (!anchors(target).has(anchor)) say(`no heading makes the anchor #${anchor}`);
      }
    }
  }
  return problems;
}

/** The README's opening: its title, then one code block holding these commands and nothing else. */
export function openingCommands(readme: string): { before: string[]; commands: string[] } {
  const tokens: Token[] = md.parse(readme, {});
  const fence = tokens.findIndex((t) => t.type === 'fence' || t.type === 'code_block');
  const head = tokens.slice(0, fence < 0 ? tokens.length : fence);
  const title = head[0]?.type === 'heading_open' && head[0].tag === 'h1' ? 3 : 0;
  const before = head.slice(title).map((t) => `${t.type}${t.content ? `: ${t.content}` : ''}`);
  const commands =
    fence < 0
      ? []
      : tokens[fence]!.content.split('\n')
          .map((l) => l.replace(/(^|\s)#.*$/, '').trim())
          .filter(Boolean);
  return { before, commands };
}
