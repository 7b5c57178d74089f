// The built `vesper` CLI copied where any user can read it, for tests that run it as another
// user (nobody): the checkout may lie in a directory only its owner can enter (a clone in a
// `mktemp -d` directory is 0700) or hold files of mode 0600, and the CLI run from there could
// not load its own code. The copy is dist/host/vesper.mjs and the packages it imports at run
// time (package.json's dependencies and theirs, found as Node resolves them), under a fresh
// directory of the system's temporary directory, every file readable by all. Pacemaker's alert
// agent, which runs as hacluster, is copied too, with the alert sender it runs beside it in
// the same layout as in the checkout (host/pacemaker/alert-agent.sh, dist/host/vesper-alert.mjs).
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import { projectRoot } from './project-root.js';

export interface CliCopy {
  /** the copied dist/host/vesper.mjs */
  vesper: string;
  /** the copied host/pacemaker/alert-agent.sh (it finds ../../dist/host/vesper-alert.mjs) */
  alertAgent: string;
  /** the directory holding the copy */
  dir: string;
  remove(): void;
}

/** The directory of package `name` as Node finds it from `from` (a package directory or the root). */
function packageDir(name: string, from: string, root: string): string | null {
  for (let d = from; ; d = dirname(d)) {
    const p = join(d, 'node_modules', name);
    if (existsSync(join(p, 'package.json'))) return p;
    if (d === root || d === dirname(d)) return null;
  }
}

function depsOf(pkgDir: string): string[] {
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>;
  return [
    ...Object.keys(pkg.dependencies ?? {}),
    ...Object.keys(pkg.optionalDependencies ?? {}),
    ...Object.keys(pkg.peerDependencies ?? {}),
  ];
}

/**
 * Whether a file of package directory pkg is needed at run time: everything, except in a native
 * addon (binding.gyp) its sources and build tree, of which only build/Release/*.node is loaded.
 */
function runtimeFile(pkg: string, src: string): boolean {
  if (!existsSync(join(pkg, 'binding.gyp'))) return true;
  const rel = relative(pkg, src).split(sep);
  if (rel[0] === 'deps' || rel[0] === 'src') return false;
  if (rel[0] !== 'build') return true;
  return rel.length === 1 || (rel[1] === 'Release' && (rel.length === 2 || (rel.length === 3 && rel[2]!.endsWith('.node'))));
}

export function readableCliCopy(): CliCopy {
  const root = projectRoot();
  const bundle = join(root, 'dist', 'host', 'vesper.mjs');
  if (!existsSync(bundle)) throw new Error(`${bundle} is missing: run npm run build`);
  const dir = mkdtempSync(join(tmpdir(), 'vesper-cli-copy-'));
  try {
    // The run-time closure of the CLI's packages (optional and peer ones when installed).
    const seen = new Set<string>();
    const todo: Array<{ name: string; from: string }> = depsOf(root).map((name) => ({ name, from: root }));
    for (let i = 0; i < todo.length && i < 10_000; i++) {
      const { name, from } = todo[i]!;
      const p = packageDir(name, from, root);
      if (!p || seen.has(p)) continue;
      seen.add(p);
      for (const dep of depsOf(p)) todo.push({ name: dep, from: p });
    }
    for (const p of seen) {
      const to = join(dir, relative(root, p));
      if (!existsSync(to)) cpSync(p, to, { recursive: true, dereference: true, filter: (src) => runtimeFile(p, src) });
    }
    mkdirSync(join(dir, 'dist', 'host'), { recursive: true });
    cpSync(bundle, join(dir, 'dist', 'host', 'vesper.mjs'));
    const sender = join(root, 'dist', 'host', 'vesper-alert.mjs');
    if (existsSync(sender)) cpSync(sender, join(dir, 'dist', 'host', 'vesper-alert.mjs'));
    mkdirSync(join(dir, 'host', 'pacemaker'), { recursive: true });
    cpSync(join(root, 'host', 'pacemaker', 'alert-agent.sh'), join(dir, 'host', 'pacemaker', 'alert-agent.sh'));
    // readable (and directories enterable) by all, whatever modes the checkout had
    execFileSync('chmod', ['-R', 'a+rX', dir]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    vesper: join(dir, 'dist', 'host', 'vesper.mjs'),
    alertAgent: join(dir, 'host', 'pacemaker', 'alert-agent.sh'),
    dir,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** '' when `node COPY --version` runs as this user; else why not (the reason to skip with). */
export function whyCopyNotRunnableAs(copy: CliCopy, as: { uid: number; gid: number }): string {
  const r = spawnSync('setpriv', [`--reuid=${as.uid}`, `--regid=${as.gid}`, '--clear-groups', process.execPath, copy.vesper, '--version'], {
    encoding: 'utf8',
    timeout: 30_000,
    cwd: '/',
  });
  if (r.error) return `cannot run setpriv: ${r.error.message}`;
  if (r.status === 0) return '';
  return `uid ${as.uid} cannot run the CLI copied to ${copy.dir} (node ${process.execPath}; a parent directory not open to others?): exit ${r.status ?? r.signal}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`;
}
