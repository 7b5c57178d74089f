// `npm run package`: the Debian packages, built with dpkg-deb from the built dist/ and this
// machine's Node runtime (docs/packaging.md says why the runtime is shipped):
//
//   dist/pkg/vesper_<version>_amd64.deb        host: CLI + daemon, probe catalogue, agent bundle
//   dist/pkg/vesper-agent_<version>_amd64.deb  guest: the agent, its runtime, unit and udev rule
//
// No network: everything comes from this checkout's dist/ and node_modules (the two native
// addons, better-sqlite3 and @unraid/libvirt, as npm built them for this Node) and the node
// binary running this script. The Debian revision is VESPER_DEB_REVISION (default 1), so that
// a test can build a newer package of the same source.
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { gzipSync } from 'node:zlib';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import semver from 'semver';
import { buildProgram } from '../host/cli/main.js';
import { VESPER_VERSION } from '../proto/version.js';
import { bashCompletion, manPage } from './package-docs.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = join(ROOT, 'dist');
/** dist/pkg, or VESPER_PKG_DIR (the package test builds a second, newer version beside the first) */
const OUT = process.env['VESPER_PKG_DIR'] ? resolve(process.env['VESPER_PKG_DIR']) : join(DIST, 'pkg');
const NODE_RANGE = '>=20.19 <21 || >=22';
/** The native addons: loaded at run time from node_modules, everything else is bundled. */
const NATIVE = ['better-sqlite3', '@unraid/libvirt', 'fs-native-extensions'];
/** Dependencies of the addons that only building them needs. */
const BUILD_ONLY = new Set(['@mapbox/node-pre-gyp', 'node-addon-api', 'tsx', 'prebuild-install', 'node-gyp']);
const MAINTAINER = 'vesper developers <vesper@localhost>';

function sh(cmd: string, args: string[], opts: { cwd?: string; quiet?: boolean } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', opts.quiet ? 'ignore' : 'inherit'], cwd: opts.cwd });
}

function need(path: string, hint: string): void {
  if (!existsSync(path)) throw new Error(`${path} is missing: ${hint}`);
}

function write(path: string, text: string, mode = 0o644): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
  chmodSync(path, mode);
}

function copy(from: string, to: string, mode = 0o644): void {
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, mode);
}

/** The node binary to ship: this one, stripped of its debug information. */
function shipNode(to: string): void {
  if (!semver.satisfies(process.versions.node, NODE_RANGE))
    throw new Error(`node ${process.versions.node} runs this script; the package needs ${NODE_RANGE}`);
  copy(process.execPath, to, 0o755);
  try {
    sh('strip', ['--strip-unneeded', to]);
  } catch {
    console.error('strip not found: the node binary is shipped unstripped');
  }
}

/** A package's directory under node_modules, following npm's nesting from `from`. */
function resolvePkg(name: string, from: string): string {
  let dir = from;
  for (;;) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    const up = dirname(dir);
    if (up === dir || relative(ROOT, up).startsWith('..')) throw new Error(`cannot resolve ${name} from ${from}`);
    dir = up;
  }
}

/** Copies an npm package without what only building it needs (sources, objects, docs, maps). */
function copyRuntimePkg(src: string, dest: string): void {
  cpSync(src, dest, {
    recursive: true,
    filter: (p) => {
      const rel = relative(src, p);
      if (rel === '') return true;
      const parts = rel.split('/');
      if (parts[0] === 'node_modules') return false; // nested deps are copied on their own
      if (['deps', 'src', 'test', 'tests', 'docs', 'binding.gyp'].includes(parts[0]!)) return false;
      // prebuilt addons: this platform's only
      if (parts[0] === 'prebuilds') return parts.length === 1 || parts[1] === 'linux-x64';
      if (parts[0] === 'build') {
        // build/ and build/Release/ themselves, then only the addon itself
        if (parts.length === 1 || (parts.length === 2 && parts[1] === 'Release')) return true;
        return parts.length === 3 && parts[1] === 'Release' && p.endsWith('.node') && !p.endsWith('test_extension.node');
      }
      return !/\.(md|map|d\.ts|d\.mts|d\.cts|gyp|gypi|cc|cpp|h|c)$/.test(p);
    },
  });
}

/** The native addons and their runtime dependency closure, copied into dest/node_modules. */
function shipNativeAddons(dest: string): void {
  const done = new Set<string>();
  const visit = (name: string, from: string): void => {
    if (BUILD_ONLY.has(name) || done.has(name)) return;
    done.add(name);
    const dir = resolvePkg(name, from);
    copyRuntimePkg(dir, join(dest, 'node_modules', name));
    const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const dep of Object.keys(pj.dependencies ?? {})) visit(dep, dir);
  };
  for (const n of NATIVE) visit(n, ROOT);
}

/** Shared libraries the ELF files need, each mapped to its Debian package on this machine. */
function libraryPackages(elfs: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const elf of elfs) {
    const needed = sh('readelf', ['-d', elf])
      .split('\n')
      .map((l) => /\(NEEDED\)\s+Shared library: \[(.+)\]/.exec(l)?.[1])
      .filter((x): x is string => !!x);
    const resolved = new Map<string, string>();
    for (const l of sh('ldd', [elf]).split('\n')) {
      const m = /^\s*(\S+) => (\/\S+)/.exec(l);
      if (m) resolved.set(m[1]!, m[2]!);
      const loader = /^\s*(\/\S+) \(/.exec(l); // the dynamic loader: a path, no "=>"
      if (loader) resolved.set(basename(loader[1]!), loader[1]!);
    }
    for (const lib of needed) {
      const path = resolved.get(lib);
      if (!path) throw new Error(`${elf} needs ${lib}, which this machine does not have`);
      out.set(lib, ownerOf(path));
    }
  }
  return out;
}

/** The Debian package that holds a file; merged /usr means it may be known by /lib or /usr/lib. */
function ownerOf(path: string): string {
  const other = path.startsWith('/usr/') ? path.slice(4) : `/usr${path}`;
  for (const p of [path, other, realpathSync(path)]) {
    try {
      return sh('dpkg', ['-S', p], { quiet: true }).split(':')[0]!.trim();
    } catch {
      /* not under this name */
    }
  }
  throw new Error(`no Debian package holds ${path}`);
}

/** Fails when a shipped ELF needs a library that no package in `depends` provides. */
function checkDepends(elfs: string[], depends: string[]): void {
  const names = new Set(depends.map((d) => d.split(/[\s(]/)[0]!));
  for (const [lib, pkg] of libraryPackages(elfs)) {
    if (!names.has(pkg)) throw new Error(`a shipped binary needs ${lib} from ${pkg}, which Depends does not name`);
  }
}

function installedSizeKiB(dir: string): number {
  let bytes = 0;
  const walkDir = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name === 'DEBIAN' && d === dir) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) walkDir(p);
      else bytes += statSync(p).size;
    }
  };
  walkDir(dir);
  return Math.ceil(bytes / 1024);
}

interface Control {
  name: string;
  depends: string[];
  recommends?: string[];
  suggests?: string[];
  description: string;
  conffiles?: string[];
  scripts: string;
}

function writeControl(stage: string, c: Control, version: string): void {
  const fields = [
    `Package: ${c.name}`,
    `Version: ${version}`,
    'Architecture: amd64',
    `Maintainer: ${MAINTAINER}`,
    `Installed-Size: ${installedSizeKiB(stage)}`,
    `Depends: ${c.depends.join(', ')}`,
    ...(c.recommends?.length ? [`Recommends: ${c.recommends.join(', ')}`] : []),
    ...(c.suggests?.length ? [`Suggests: ${c.suggests.join(', ')}`] : []),
    'Section: admin',
    'Priority: optional',
    'Homepage: https://github.com/vesper/vesper',
    `Description: ${c.description}`,
    '',
  ];
  write(join(stage, 'DEBIAN', 'control'), fields.join('\n'));
  if (c.conffiles?.length) write(join(stage, 'DEBIAN', 'conffiles'), `${c.conffiles.join('\n')}\n`);
  for (const s of ['postinst', 'prerm', 'postrm']) copy(join(c.scripts, s), join(stage, 'DEBIAN', s), 0o755);
}

function dpkgDeb(stage: string, out: string): void {
  // --root-owner-group: every file root's, whoever builds. zstd (dpkg >= 1.21.18, so Debian 12
  // and 13): xz of the ~86 MB runtime took minutes on a loaded 2-core machine, zstd seconds.
  sh('dpkg-deb', ['--root-owner-group', '-Zzstd', '--build', stage, out]);
}

const COPYRIGHT = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vesper
License: Apache-2.0

Files: *
License: Apache-2.0
Comment: The bundled Node.js runtime (usr/lib/vesper*/node) is under the MIT license and
 carries the third-party licenses listed at https://github.com/nodejs/node/blob/main/LICENSE.
`;

const BASE_DEPENDS = ['libc6 (>= 2.28)', 'libstdc++6 (>= 5.2)', 'libgcc-s1'];

function hostPackage(version: string): string {
  const stage = join(OUT, 'stage', 'vesper');
  const lib = join(stage, 'usr/lib/vesper');
  shipNode(join(lib, 'node'));
  copy(join(DIST, 'host', 'vesper.bundled.mjs'), join(lib, 'host', 'vesper.mjs'), 0o644);
  // the Pacemaker alert agent's sender alone (alert-agent.sh runs it with ./node)
  copy(join(DIST, 'host', 'vesper-alert.bundled.mjs'), join(lib, 'host', 'vesper-alert.mjs'), 0o644);
  shipNativeAddons(lib);
  for (const f of readdirSync(join(DIST, 'probes'))) copy(join(DIST, 'probes', f), join(lib, 'probes', f));
  copy(join(DIST, 'guest-agent', 'vesper-agent.mjs'), join(lib, 'agent', 'vesper-agent.mjs'));
  copy(join(ROOT, 'host/pacemaker/alert-agent.sh'), join(lib, 'alert-agent.sh'), 0o755);
  write(
    join(stage, 'usr/bin/vesper'),
    '#!/bin/sh\n# vesper: the CLI and daemon, on the runtime shipped with it\nexec /usr/lib/vesper/node /usr/lib/vesper/host/vesper.mjs "$@"\n',
    0o755,
  );
  copy(join(ROOT, 'host/systemd/vesperd.service'), join(stage, 'lib/systemd/system/vesperd.service'));
  copy(join(ROOT, 'host/config/vesper.example.yaml'), join(stage, 'etc/vesper/vesper.yaml'));
  copy(join(ROOT, 'host/metrics/vesper.rules.yml'), join(stage, 'usr/share/vesper/prometheus/vesper.rules.yml'));
  const program = buildProgram();
  write(join(stage, 'usr/share/bash-completion/completions/vesper'), bashCompletion(program));
  const date = new Date().toISOString().slice(0, 10);
  const man = join(stage, 'usr/share/man/man1/vesper.1.gz');
  mkdirSync(dirname(man), { recursive: true });
  writeFileSync(man, gzipSync(manPage(program, version, date), { level: 9 }));
  write(join(stage, 'usr/share/doc/vesper/copyright'), COPYRIGHT);

  // libvirt-clients: virsh, for the calls the binding lacks (device hot-plug, reboot, domstate)
  const depends = [...BASE_DEPENDS, 'libvirt0 (>= 9.0.0)', 'libvirt-clients', 'passwd'];
  checkDepends([join(lib, 'node'), ...findAddons(lib)], depends);
  selfTest(lib);
  writeControl(
    stage,
    {
      name: 'vesper',
      depends,
      recommends: ['libvirt-daemon-system'],
      suggests: ['pacemaker', 'openssh-client'],
      description:
        'event-driven failure detector for virtual machines (host)\n' +
        ' vesperd watches the VMs of this host through libvirt, pushes signed kernel probes into\n' +
        ' their guest agents, filters the events that come back and runs actions (exec, restart,\n' +
        ' fenced failover). The vesper command is its CLI. Ships its own Node.js runtime.',
      conffiles: ['/etc/vesper/vesper.yaml'],
      scripts: join(ROOT, 'packaging/deb/vesper'),
    },
    version,
  );
  const out = join(OUT, `vesper_${version}_amd64.deb`);
  dpkgDeb(stage, out);
  return out;
}

function findAddons(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((p) => p.endsWith('.node')).map((p) => join(dir, p));
}

/** The staged runtime runs the staged CLI and loads both addons: a broken stage fails here. */
function selfTest(lib: string): void {
  const node = join(lib, 'node');
  const v = sh(node, [join(lib, 'host', 'vesper.mjs'), '--version']).trim();
  if (v !== VESPER_VERSION) throw new Error(`the staged vesper --version printed ${JSON.stringify(v)}`);
  const imports = NATIVE.map((n) => `await import('${n}');`).join(' ');
  sh(node, ['--input-type=module', '-e', imports], { cwd: join(lib, 'host') });
}

function agentPackage(version: string): string {
  const stage = join(OUT, 'stage', 'vesper-agent');
  const lib = join(stage, 'usr/lib/vesper-agent');
  shipNode(join(lib, 'node'));
  copy(join(DIST, 'guest-agent', 'vesper-agent.mjs'), join(lib, 'vesper-agent.mjs'));
  copy(join(ROOT, 'guest-agent/systemd/vesper-agent.service'), join(stage, 'lib/systemd/system/vesper-agent.service'));
  copy(join(ROOT, 'guest-agent/systemd/90-vesper-agent.rules'), join(stage, 'lib/udev/rules.d/90-vesper-agent.rules'));
  write(join(stage, 'usr/share/doc/vesper-agent/copyright'), COPYRIGHT);
  checkDepends([join(lib, 'node')], BASE_DEPENDS);
  const help = sh(join(lib, 'node'), [join(lib, 'vesper-agent.mjs'), '--help']);
  if (!help.includes('--transport')) throw new Error('the staged agent does not answer --help');
  writeControl(
    stage,
    {
      name: 'vesper-agent',
      depends: BASE_DEPENDS,
      description:
        'vesper guest agent: kernel probes for the host failure detector\n' +
        ' Runs inside a VM: loads the probe modules its host signed and streams kernel events\n' +
        ' (signals, OOM kills, process exits, pressure stalls) over the virtio-serial port\n' +
        ' org.vesper.agent.0. Started by udev when the port appears, stopped when it goes.\n' +
        ' Needs no network. Ships its own Node.js runtime.',
      scripts: join(ROOT, 'packaging/deb/vesper-agent'),
    },
    version,
  );
  const out = join(OUT, `vesper-agent_${version}_amd64.deb`);
  dpkgDeb(stage, out);
  return out;
}

async function main(): Promise<void> {
  need(join(DIST, 'guest-agent', 'vesper-agent.mjs'), 'run npm run build first');
  need(join(DIST, 'probes'), 'run npm run build first');
  const revision = process.env['VESPER_DEB_REVISION'] ?? '1';
  if (!/^[0-9][0-9a-z.+~]*$/.test(revision)) throw new Error(`VESPER_DEB_REVISION=${revision} is not a Debian revision`);
  const version = `${VESPER_VERSION}-${revision}`;

  // The host's CLI and daemon as one file: every JS dependency inside, the addons outside.
  const bundle = (entry: string, outfile: string) =>
    build({
      entryPoints: [join(ROOT, entry)],
      outfile: join(DIST, 'host', outfile),
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'esm',
      logLevel: 'error',
      legalComments: 'none',
      // The scripts and unit template `vesper agent install` runs on a target, carried as text
      // (as scripts/build.mjs does).
      loader: { '.sh': 'text', '.service': 'text' },
      // ssh2's optional sshcrypto.node stays out: ssh2 then uses Node's own crypto (it tries the
      // addon in a try/catch); cpu-features likewise.
      external: [...NATIVE, '*.node', 'cpu-features'],
      // CommonJS dependencies bundled into ESM: require() for Node built-ins, and __dirname and
      // __filename, which ssh2's crypto code reads (found by test/acceptance/package.test.ts).
      banner: {
        js: [
          "import { createRequire as __vesperCreateRequire } from 'node:module';",
          "import { fileURLToPath as __vesperFileURLToPath } from 'node:url';",
          "import { dirname as __vesperDirname } from 'node:path';",
          'const require = __vesperCreateRequire(import.meta.url);',
          'const __filename = __vesperFileURLToPath(import.meta.url);',
          'const __dirname = __vesperDirname(__filename);',
        ].join(' '),
      },
    });
  await bundle('host/cli/vesper.ts', 'vesper.bundled.mjs');
  // The Pacemaker alert agent's sender alone: protobufjs inside, as in the CLI.
  await bundle('host/cli/alert-main.ts', 'vesper-alert.bundled.mjs');

  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const host = hostPackage(version);
  const agent = agentPackage(version);
  rmSync(join(OUT, 'stage'), { recursive: true, force: true });
  for (const p of [host, agent]) {
    const size = sh('dpkg-deb', ['-f', p, 'Installed-Size']).trim();
    console.error(
      `built ${relative(ROOT, p)}: ${(statSync(p).size / 1048576).toFixed(1)} MiB, installed ${(Number(size) / 1024).toFixed(1)} MiB`,
    );
  }
}

await main();
