// A real headless Chromium (Debian's chromium package, scripts/chromium.sh) looking at an HTML
// report of `vesper analyze`: a screenshot that must be a real, non-blank PNG of the window's
// size, and the DOM as Chromium built it, which must hold the given texts as text and no markup
// that was not ours. Used by the acceptance tests on a fixture today and on a real
// `vesper analyze -o html` of a real guest fault later, so nothing here knows the fixture.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inflateSync } from 'node:zlib';
import { expect } from 'vitest';

export const CHROMIUM_SCRIPT = join(import.meta.dirname, '..', '..', 'scripts', 'chromium.sh');
/** A fresh machine apt-gets chromium and its ~100 dependencies first. */
export const CHROMIUM_INSTALL_TIMEOUT = 15 * 60_000;
/** One headless run; ~1-3 s here, the first one builds the font cache. */
const RUN_TIMEOUT = 60_000;

function chromiumPath(): string | null {
  const r = spawnSync('bash', [CHROMIUM_SCRIPT, 'path'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** Why the browser checks cannot run here, or '' once chromium is installed (installing it if root). */
export function whyNoChromium(): string {
  if (process.platform !== 'linux') return "needs Linux (Debian's chromium package)";
  if (chromiumPath()) return '';
  if (process.getuid?.() !== 0) return 'chromium is not installed and installing the Debian package needs root';
  const r = spawnSync('bash', [CHROMIUM_SCRIPT, 'install'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    timeout: CHROMIUM_INSTALL_TIMEOUT,
  });
  if (r.status === 100) return `the chromium Debian package could not be installed: ${r.stderr.trim().split('\n').pop()}`;
  // Any other failure is a real one: the tests run and fail on it.
  if (r.status !== 0) console.warn(`scripts/chromium.sh install failed (${r.status ?? r.signal}):\n${r.stderr}`);
  return '';
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a command in a process group of its own and kills the whole group when it exits or the
 * time runs out: Chromium leaves zygote and renderer processes behind if only the browser dies.
 * A helper that left the group and still holds the pipes gets two seconds after the exit.
 */
function runBounded(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    let grace: NodeJS.Timeout | undefined;
    let settled = false;
    const killGroup = (): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // ESRCH: the group is gone already.
      }
    };
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(grace);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, timeoutMs);
    child.on('error', (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    });
    child.on('exit', (code, signal) => {
      killGroup();
      grace = setTimeout(() => finish(code, signal), 2000);
    });
    child.on('close', finish);
  });
}

export interface PngInfo {
  width: number;
  height: number;
  /** distinct RGBA values over all pixels */
  colours: number;
  /** share of pixels that are not pure white */
  inked: number;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Reads a PNG as Chromium writes one (8-bit RGB or RGBA, not interlaced) down to its pixels. */
export function readPng(png: Buffer): PngInfo {
  if (png.length < 33 || !png.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error('not a PNG: bad signature');
  if (png.toString('latin1', 12, 16) !== 'IHDR') throw new Error('not a PNG: IHDR is not the first chunk');
  const width = png.readUInt32BE(16);
  const height = png.readUInt32BE(20);
  const [bitDepth, colourType, , , interlace] = [png[24], png[25], png[26], png[27], png[28]];
  if (bitDepth !== 8 || (colourType !== 2 && colourType !== 6) || interlace !== 0) {
    throw new Error(`PNG of a kind this reader does not decode: depth ${bitDepth}, colour type ${colourType}, interlace ${interlace}`);
  }
  const idat: Buffer[] = [];
  for (let at = 8; at + 8 <= png.length;) {
    const len = png.readUInt32BE(at);
    const type = png.toString('latin1', at + 4, at + 8);
    if (type === 'IDAT') idat.push(png.subarray(at + 8, at + 8 + len));
    if (type === 'IEND') break;
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const bpp = colourType === 6 ? 4 : 3;
  const stride = width * bpp;
  if (raw.length < height * (stride + 1)) throw new Error(`PNG data too short: ${raw.length} bytes for ${width}x${height}`);
  let prev = Buffer.alloc(stride);
  let cur = Buffer.alloc(stride);
  const colours = new Set<number>();
  let inked = 0;
  for (let y = 0; y < height; y++) {
    const at = y * (stride + 1);
    const filter = raw[at]!;
    for (let i = 0; i < stride; i++) {
      const x = raw[at + 1 + i]!;
      const left = i >= bpp ? cur[i - bpp]! : 0;
      const up = prev[i]!;
      const upLeft = i >= bpp ? prev[i - bpp]! : 0;
      const predicted =
        filter === 0 ? 0 : filter === 1 ? left : filter === 2 ? up : filter === 3 ? (left + up) >> 1 : paeth(left, up, upLeft);
      cur[i] = (x + predicted) & 0xff;
    }
    for (let i = 0; i < stride; i += bpp) {
      const alpha = bpp === 4 ? cur[i + 3]! : 255;
      const rgb = (cur[i]! << 16) | (cur[i + 1]! << 8) | cur[i + 2]!;
      colours.add(alpha * 0x1000000 + rgb);
      if (rgb !== 0xffffff) inked++;
    }
    [prev, cur] = [cur, prev];
  }
  return { width, height, colours: colours.size, inked: inked / (width * height) };
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

/**
 * The text a reader sees, from serialized HTML: tags dropped (quoted attribute values may hold
 * '>'), style element contents dropped, entities decoded, white space collapsed.
 */
export function visibleText(html: string): string {
  return html
    .replace(/<style\b[^>]*>[\s\S]*?<\/style>/gi, ' ')
    .replace(/<(?:[^>"']|"[^"]*"|'[^']*')*>/g, ' ')
    .replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, e: string) => {
      if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
      return ENTITIES[e.toLowerCase()] ?? m;
    })
    .replace(/\s+/g, ' ');
}

/**
 * What in a report's markup could reach the network or run code: elements that load or execute,
 * src/href attributes (in-page "#..." links aside), CSS url() and @import, absolute URLs inside
 * tags. Escaped text cannot match: it holds no '<'.
 */
export function fetchesAndScripts(html: string): string[] {
  const found: string[] = [];
  const tags = html.match(/<[a-zA-Z!/](?:[^>"']|"[^"]*"|'[^']*')*>/g) ?? [];
  for (const tag of tags) {
    if (/^<\/?(script|iframe|object|embed|link|img|image|video|audio|source|base|frame|form)\b/i.test(tag)) found.push(tag);
    else if (/\s(src|srcset|xlink:href|action|formaction|background|poster)\s*=/i.test(tag)) found.push(tag);
    else if (/\shref\s*=\s*(?!["']?#)/i.test(tag)) found.push(tag);
    else if (/\son[a-z]+\s*=/i.test(tag)) found.push(tag);
    else if (/https?:\/\//i.test(tag) && !/^<!DOCTYPE/i.test(tag)) found.push(tag);
  }
  for (const style of html.match(/<style\b[^>]*>[\s\S]*?<\/style>/gi) ?? []) {
    if (/url\s*\(|@import/i.test(style)) found.push('a style sheet with url() or @import');
  }
  return found;
}

export interface ReportCheck {
  png: PngInfo;
  /** the DOM as Chromium serialized it after loading the page */
  dom: string;
  /** what the page shows as text */
  text: string;
  /** captions of the timeline's marks (<text class="label">), as Chromium built them */
  markLabels: string[];
  /** data-id of every timeline mark in the DOM */
  markIds: number[];
}

export interface CheckOptions {
  width?: number;
  height?: number;
  /** keep a copy of the screenshot here (VESPER_REPORT_SCREENSHOT in the acceptance test) */
  keepScreenshot?: string;
}

/**
 * Opens the report in headless Chromium twice (a screenshot, then the DOM) and checks: the
 * screenshot is a PNG of the window's size with more than a handful of colours, every text of
 * expectTexts is on the page as text, and the DOM holds nothing that fetches or runs. Returns
 * what it saw for further checks.
 */
export async function checkReportInChromium(htmlPath: string, expectTexts: string[], opts: CheckOptions = {}): Promise<ReportCheck> {
  const width = opts.width ?? 1400;
  const height = opts.height ?? 1000;
  const binary = chromiumPath();
  if (!binary) throw new Error('chromium is not installed (scripts/chromium.sh install)');
  expect(fetchesAndScripts(readFileSync(htmlPath, 'utf8')), 'markup in the report file that fetches or runs').toEqual([]);

  const dir = mkdtempSync(join(tmpdir(), 'vesper-chromium-'));
  try {
    // A throw-away profile and home: no state from earlier runs, nothing left in root's home.
    const env = { ...process.env, HOME: dir, XDG_CONFIG_HOME: join(dir, 'config'), XDG_CACHE_HOME: join(dir, 'cache') };
    const common = [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-extensions',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-breakpad',
      '--disable-crash-reporter',
      '--hide-scrollbars',
      `--user-data-dir=${join(dir, 'profile')}`,
      `--window-size=${width},${height}`,
    ];
    const url = pathToFileURL(htmlPath).href;
    const shot = join(dir, 'report.png');

    const s = await runBounded(binary, [...common, `--screenshot=${shot}`, url], env, RUN_TIMEOUT);
    const what = (r: Run): string =>
      `${r.timedOut ? `timed out after ${RUN_TIMEOUT} ms` : `exit ${r.code ?? r.signal}`}\n${r.stderr.trim().slice(-4000)}`;
    expect(existsSync(shot), `chromium --screenshot wrote no file (${what(s)})`).toBe(true);
    const bytes = readFileSync(shot);
    if (opts.keepScreenshot) copyFileSync(shot, opts.keepScreenshot);
    const png = readPng(bytes);
    expect([png.width, png.height], 'screenshot size').toEqual([width, height]);
    expect(png.colours, 'distinct colours in the screenshot: a blank page has one').toBeGreaterThan(16);

    const d = await runBounded(binary, [...common, '--dump-dom', url], env, RUN_TIMEOUT);
    expect(d.timedOut || d.code !== 0 ? what(d) : '', 'chromium --dump-dom').toBe('');
    const dom = d.stdout;
    expect(dom, 'dumped DOM').toMatch(/<\/html>\s*$/i);
    expect(fetchesAndScripts(dom), 'markup in the DOM Chromium built that fetches or runs').toEqual([]);

    const text = visibleText(dom);
    const norm = (t: string): string => t.replace(/\s+/g, ' ').trim();
    const missing = expectTexts.filter((t) => !text.includes(norm(t)));
    expect(missing, 'texts that are not on the page').toEqual([]);

    const markLabels = [...dom.matchAll(/<text\b[^>]*\bclass="label"[^>]*>([^<]*)<\/text>/g)].map((m) => visibleText(m[1]!).trim());
    const markIds = [...dom.matchAll(/<g\b[^>]*\bclass="mark[^"]*"[^>]*\bdata-id="(\d+)"/g)].map((m) => Number(m[1]));
    return { png, dom, text, markLabels, markIds };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
