// Builds the guest image: Debian's stock kernel plus an initramfs holding busybox, the host's
// own node binary, the agent bundle, the host's public key and a demo workload. No disk image,
// no package manager in the guest: the whole guest is one cpio archive, cached by content hash.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip, gunzipSync } from 'node:zlib';
import { ErrorCode, VesperError } from '../../../proto/errors.js';
import { crashOnSignalProgram, exitWithArgProgram, segfaultProgram } from '../demo/tiny-elf.js';
import { projectRoot } from '../../helpers/project-root.js';
import { cpioChunks, type CpioEntry } from './cpio.js';
import {
  AGENT_PATH,
  DEMO_SERVICE,
  EXIT_PROGRAM,
  SEGV_PROGRAM,
  FAULT_HELPER,
  HOST_KEY_PATH,
  INDEX_HTML,
  GUEST_CONF_PATH,
  faultHelperScript,
  guestConf,
  initScript,
} from './guest-scripts.js';

/**
 * panic=0: after a panic the guest stays halted (no reboot) so pvpanic and libvirt report
 * the crash and it can be inspected. loglevel=4 keeps routine kernel chatter off the slow
 * serial console while warnings and panics still show.
 */
export const GUEST_KERNEL_CMDLINE = 'console=ttyS0 panic=0 loglevel=4';

/** Bump whenever the image layout changes in a way the hashed inputs below do not capture. */
const BUILDER_VERSION = 1;
const KERNEL_METAPACKAGE = 'linux-image-amd64';
/**
 * Drivers the guest needs, in load order, for a kernel without udev. Names absent from the
 * kernel (or built in) are skipped; their dependencies are read from the modules themselves.
 */
const GUEST_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'virtio_console',
  'pvpanic',
  'pvpanic_pci',
  'pvpanic_mmio',
  'i6300esb',
];
/**
 * Images with stress tools (the busy-guest soak) also mount a scratch disk: its driver and
 * filesystem. ext4 asks the crypto API for crc32c at mount time; without modprobe in the guest
 * that implementation must already be loaded.
 */
const STRESS_MODULES = ['virtio_blk', 'crc32c_generic', 'ext4'];
/** Debian's stress-ng (scripts/host-setup.sh installs it), copied into stress-tool images. */
const STRESS_NG = '/usr/bin/stress-ng';

const guestModules = (stressTools: boolean): string[] => (stressTools ? [...GUEST_MODULES, ...STRESS_MODULES] : GUEST_MODULES);

export interface BuildGuestImageOptions {
  /** Default: <repo>/.cache/guest */
  cacheDir?: string;
  /** The host's public key (PEM): the only key the guest agent will trust. */
  hostPubKeyPem: string;
  /** Also install the test-only fault injector (vesper-fault) and what it needs. */
  testHelpers?: boolean;
  /** Also stress-ng and the scratch disk's modules (implies testHelpers: the helper starts it). */
  stressTools?: boolean;
  onProgress?: (step: string, detail?: string) => void;
}

export interface GuestImage {
  kernel: string;
  initrd: string;
  hash: string;
  kernelRelease: string;
  cached: boolean;
}

interface ImageManifest {
  hash: string;
  kernelRelease: string;
  kernelPackage: string;
  testHelpers: boolean;
  stressTools?: boolean;
  modules: string[];
  builtAt: string;
}

interface KernelPackage {
  name: string;
  version: string;
}

interface KernelModule {
  name: string;
  /** Path inside the image, uncompressed. */
  path: string;
  data: Buffer;
}

const execFileP = promisify(execFile);

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 64 << 20 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new VesperError(ErrorCode.INTERNAL, `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`, '', { cause: err });
  }
}

export async function buildGuestImage(opts: BuildGuestImageOptions): Promise<GuestImage> {
  const root = projectRoot();
  const cacheDir = resolve(opts.cacheDir ?? join(root, '.cache', 'guest'));
  const progress = opts.onProgress ?? (() => {});
  const stressTools = opts.stressTools ?? false;
  const testHelpers = (opts.testHelpers ?? false) || stressTools;
  const wantedModules = guestModules(stressTools);

  progress('resolve', `kernel package behind ${KERNEL_METAPACKAGE}`);
  const pkg = await resolveKernelPackage(join(cacheDir, 'kernel'));
  const files = await userspaceEntries(root, opts.hostPubKeyPem, testHelpers, stressTools);
  // /init lists module paths, known only after unpacking; hashing its template with the
  // wanted names stands for it, since the kernel version fixes the rest.
  const initTemplate = initScript() + guestConf({ modules: wantedModules.map((name) => ({ name, path: '' })), testHelpers });
  const hash = imageHash(pkg, initTemplate, files, testHelpers, wantedModules, stressTools);

  const imagesDir = join(cacheDir, 'images');
  const final = join(imagesDir, hash.slice(0, 16));
  const existing = readManifest(final);
  if (existing) {
    progress('cached', final);
    return result(final, existing, true);
  }

  await mkdir(imagesDir, { recursive: true });
  await removeStaleBuilds(imagesDir);
  const work = await mkdtemp(join(imagesDir, '.build-'));
  try {
    const deb = await fetchKernelDeb(join(cacheDir, 'kernel'), pkg, progress);
    progress('unpack', basename(deb));
    const tree = join(work, 'kernel');
    await run('dpkg-deb', ['-x', deb, tree]);
    const { release, modulesDir, vmlinuz } = await locateKernel(tree);

    progress('modules', release);
    const modules = await resolveModules(modulesDir, wantedModules, progress);
    const modulePaths = modules.map((m) => ({ name: m.name, path: `/lib/modules/${release}/${m.path}` }));
    const entries: CpioEntry[] = [
      ...files,
      ...modules.map((m, i): CpioEntry => ({ kind: 'file', path: modulePaths[i]!.path, mode: 0o644, data: m.data })),
      { kind: 'file', path: '/init', mode: 0o755, data: Buffer.from(initScript()) },
      { kind: 'file', path: GUEST_CONF_PATH, mode: 0o644, data: Buffer.from(guestConf({ modules: modulePaths, testHelpers })) },
    ];

    progress('cpio', 'writing the initramfs (cpio newc, gzip -1)');
    const initrd = join(work, 'initrd.img');
    await pipeline(Readable.from(cpioChunks(announceBigFiles(entries, progress))), createGzip({ level: 1 }), createWriteStream(initrd));
    await copyFile(vmlinuz, join(work, 'vmlinuz'));
    await rm(tree, { recursive: true, force: true });
    const manifest: ImageManifest = {
      hash,
      kernelRelease: release,
      kernelPackage: `${pkg.name}=${pkg.version}`,
      testHelpers,
      ...(stressTools ? { stressTools } : {}),
      modules: modules.map((m) => m.name),
      builtAt: new Date().toISOString(),
    };
    await writeFile(join(work, 'image.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    // mkdtemp made it 0700; libvirt's qemu may run as another user and must read the files.
    await chmod(work, 0o755);
    try {
      await rename(work, final);
    } catch (err) {
      // A concurrent build of the same inputs got there first: theirs is as good as ours.
      const theirs = readManifest(final);
      if (!theirs) throw err;
      await rm(work, { recursive: true, force: true });
      return result(final, theirs, true);
    }
    progress('done', `${final} (initrd ${(statSync(join(final, 'initrd.img')).size / 1e6).toFixed(1)} MB)`);
    return result(final, manifest, false);
  } catch (err) {
    await rm(work, { recursive: true, force: true });
    throw err;
  }
}

function result(dir: string, m: ImageManifest, cached: boolean): GuestImage {
  return { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), hash: m.hash, kernelRelease: m.kernelRelease, cached };
}

function readManifest(dir: string): ImageManifest | null {
  try {
    const m = JSON.parse(readFileSync(join(dir, 'image.json'), 'utf8')) as ImageManifest;
    return existsSync(join(dir, 'vmlinuz')) && existsSync(join(dir, 'initrd.img')) ? m : null;
  } catch {
    return null;
  }
}

/** Work directories of builds that died: each holds an unpacked kernel (~400 MB). */
async function removeStaleBuilds(imagesDir: string): Promise<void> {
  for (const d of await readdir(imagesDir)) {
    const p = join(imagesDir, d);
    if (d.startsWith('.build-') && Date.now() - (await stat(p)).mtimeMs > 3600_000) await rm(p, { recursive: true, force: true });
  }
}

function imageHash(
  pkg: KernelPackage,
  initTemplate: string,
  files: CpioEntry[],
  testHelpers: boolean,
  modules: string[],
  stressTools: boolean,
): string {
  const h = createHash('sha256');
  const add = (label: string, value: string | Buffer): void => {
    h.update(`${label}\0${value.length}\0`);
    h.update(value);
  };
  add('builder', String(BUILDER_VERSION));
  add('kernel', `${pkg.name}=${pkg.version}`);
  add('modules', modules.join(' '));
  add('init', initTemplate);
  add('testHelpers', String(testHelpers));
  // Only when set, so that the images without them keep the hash they had.
  if (stressTools) add('stressTools', 'true');
  for (const e of files) {
    switch (e.kind) {
      case 'file':
        add(`file ${e.path} ${e.mode}`, e.data);
        break;
      case 'hostFile': {
        // Hashing node's 100 MB on every call would cost more than it saves.
        const st = statSync(e.source);
        add(`host ${e.path} ${e.mode}`, `${e.source} ${st.size} ${st.mtimeMs}`);
        break;
      }
      case 'symlink':
        add(`link ${e.path}`, e.target);
        break;
      case 'dir':
        add(`dir ${e.path}`, String(e.mode ?? 0o755));
        break;
      case 'chardev':
        add(`chr ${e.path}`, `${e.mode} ${e.major}:${e.minor}`);
        break;
    }
  }
  return h.digest('hex');
}

/** Passes the entries through, reporting each large host file as it starts being copied. */
function* announceBigFiles(entries: CpioEntry[], progress: (step: string, detail?: string) => void): Generator<CpioEntry> {
  for (const e of entries) {
    if (e.kind === 'hostFile') {
      const size = statSync(e.source).size;
      if (size > 16 << 20) progress('node', `copying ${e.source} (${(size / 1e6).toFixed(0)} MB) to ${e.path}`);
    }
    yield e;
  }
}

// ---------------------------------------------------------------------------------------------
// Userspace

async function userspaceEntries(root: string, hostPubKeyPem: string, testHelpers: boolean, stressTools: boolean): Promise<CpioEntry[]> {
  const agentBundle = join(root, 'dist', 'guest-agent', 'vesper-agent.mjs');
  if (!existsSync(agentBundle)) throw new VesperError(ErrorCode.USAGE, `${agentBundle} is missing: run npm run build first`);
  const busybox = findStaticBusybox();
  const text = (path: string, s: string, mode = 0o644): CpioEntry => ({ kind: 'file', path, mode, data: Buffer.from(s) });

  const entries: CpioEntry[] = [
    // The kernel opens /dev/console for /init before anything is mounted.
    { kind: 'chardev', path: '/dev/console', mode: 0o600, major: 5, minor: 1 },
    ...['/proc', '/sys', '/tmp', '/run', '/root', '/var'].map((path): CpioEntry => ({ kind: 'dir', path })),
    { kind: 'hostFile', path: '/bin/busybox', mode: 0o755, source: busybox },
    ...(await busyboxApplets(busybox)).map((path): CpioEntry => ({ kind: 'symlink', path, target: '/bin/busybox' })),
    ...(await withSharedLibraries(realpathSync(process.execPath), '/usr/bin/node')),
    { kind: 'file', path: AGENT_PATH, mode: 0o644, data: await readFile(agentBundle) },
    text(HOST_KEY_PATH, hostPubKeyPem),
    text('/etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    text('/etc/group', 'root:x:0:\n'),
    text('/etc/hostname', 'vesper-guest\n'),
    text('/srv/www/index.html', INDEX_HTML),
    { kind: 'file', path: DEMO_SERVICE, mode: 0o755, data: crashOnSignalProgram() },
    { kind: 'file', path: EXIT_PROGRAM, mode: 0o755, data: exitWithArgProgram() },
    { kind: 'file', path: SEGV_PROGRAM, mode: 0o755, data: segfaultProgram() },
  ];
  if (testHelpers) {
    // busybox has no chrt; util-linux's only needs libc, which node brought already.
    entries.push(text(FAULT_HELPER, faultHelperScript(), 0o755), ...(await withSharedLibraries('/usr/bin/chrt', '/usr/bin/chrt')));
  }
  if (stressTools) {
    if (!existsSync(STRESS_NG))
      throw new VesperError(ErrorCode.USAGE, `${STRESS_NG} is missing: run scripts/host-setup.sh (or apt-get install stress-ng)`);
    // stress-ng writes its temporary files on the scratch disk, mounted here by the helper.
    entries.push({ kind: 'dir', path: '/mnt/scratch' }, ...(await withSharedLibraries(STRESS_NG, STRESS_NG)));
  }
  return dedupe(entries);
}

/** Shared libraries appear once even when several binaries need them. */
function dedupe(entries: CpioEntry[]): CpioEntry[] {
  const seen = new Set<string>();
  return entries.filter((e) => !seen.has(e.path) && seen.add(e.path));
}

function findStaticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (existsSync(p) && !hasInterpreter(readFileSync(p).subarray(0, 4096))) return realpathSync(p);
  }
  throw new VesperError(ErrorCode.USAGE, 'no static busybox on this host: apt-get install busybox-static');
}

/** True if an ELF64 file names a dynamic loader (PT_INTERP), i.e. is not static. */
function hasInterpreter(head: Buffer): boolean {
  const phoff = Number(head.readBigUInt64LE(32));
  const phentsize = head.readUInt16LE(54);
  const phnum = head.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) if (head.readUInt32LE(phoff + i * phentsize) === 3) return true;
  return false;
}

async function busyboxApplets(busybox: string): Promise<string[]> {
  // --list-full gives each applet its usual directory (bin/sh, usr/bin/tail, sbin/insmod), so
  // absolute paths in scripts work and really exec, with the applet's name as comm.
  const out = await run(busybox, ['--list-full']);
  return out
    .split('\n')
    .filter((l) => l && l !== 'bin/busybox')
    .map((l) => `/${l}`);
}

/** A dynamically linked host binary plus what ldd says it loads, at the same paths. */
async function withSharedLibraries(source: string, guestPath: string): Promise<CpioEntry[]> {
  const entries: CpioEntry[] = [{ kind: 'hostFile', path: guestPath, mode: 0o755, source }];
  for (const line of (await run('ldd', [source])).split('\n')) {
    if (line.includes('not found')) throw new VesperError(ErrorCode.INTERNAL, `${source}: ${line.trim()}`);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
    const lib = /^\s*(?:\S+ => )?(\/\S+) \(0x/.exec(line)?.[1];
    if (lib) entries.push({ kind: 'hostFile', path: lib, mode: 0o755, source: realpathSync(lib) });
  }
  return entries;
}

// ---------------------------------------------------------------------------------------------
// Kernel

/** The kernel package behind the metapackage, or (offline) the newest one already downloaded. */
async function resolveKernelPackage(debDir: string): Promise<KernelPackage> {
  try {
    // One apt-cache call: the metapackage pins the exact version it depends on.
    const show = await run('apt-cache', ['show', '--no-all-versions', KERNEL_METAPACKAGE]);
    const m = /^Depends:.*?\b(linux-image-[^\s,(]+) \(= ([^)\s]+)\)/m.exec(show);
    if (!m) throw new VesperError(ErrorCode.INTERNAL, `${KERNEL_METAPACKAGE} pins no linux-image package version`);
    return { name: m[1]!, version: m[2]! };
  } catch (err) {
    const debs = existsSync(debDir) ? (await readdir(debDir)).filter((f) => /^linux-image-.*\.deb$/.test(f)).sort() : [];
    const m = /^(linux-image-[^_]+)_([^_]+)_/.exec(debs.at(-1) ?? '');
    if (!m) throw err;
    return { name: m[1]!, version: decodeURIComponent(m[2]!) };
  }
}

async function fetchKernelDeb(debDir: string, pkg: KernelPackage, progress: (step: string, detail?: string) => void): Promise<string> {
  const deb = join(debDir, `${pkg.name}_${encodeURIComponent(pkg.version)}_amd64.deb`);
  if (existsSync(deb)) return deb;
  await mkdir(debDir, { recursive: true });
  const tmp = await mkdtemp(join(debDir, '.download-'));
  try {
    progress('download', `${pkg.name} ${pkg.version}`);
    // Running as root, apt would try to drop to _apt, which cannot write our private dir.
    await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', `${pkg.name}=${pkg.version}`], tmp);
    const got = (await readdir(tmp)).find((f) => f.endsWith('.deb'));
    if (!got) throw new VesperError(ErrorCode.INTERNAL, `apt-get download ${pkg.name} produced no .deb`);
    await rename(join(tmp, got), deb);
    return deb;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function locateKernel(tree: string): Promise<{ release: string; modulesDir: string; vmlinuz: string }> {
  for (const base of ['lib/modules', 'usr/lib/modules']) {
    const dir = join(tree, base);
    if (!existsSync(dir)) continue;
    const [release] = await readdir(dir);
    const vmlinuz = join(tree, 'boot', `vmlinuz-${release}`);
    if (release && existsSync(vmlinuz)) return { release, modulesDir: join(dir, release), vmlinuz };
  }
  throw new VesperError(ErrorCode.INTERNAL, `no kernel and modules found in the unpacked package ${tree}`);
}

const moduleName = (file: string): string =>
  basename(file)
    .replace(/\.ko(\.\w+)?$/, '')
    .replace(/-/g, '_');

/**
 * The wanted modules and everything they depend on, dependencies first, decompressed (busybox
 * insmod cannot read .ko.xz/.ko.zst). Dependencies come from modules.dep when the package
 * ships one; Debian's does not (depmod runs at install time), so otherwise from each module's
 * own .modinfo "depends=", which is what depmod would have written.
 */
async function resolveModules(
  modulesDir: string,
  wanted: string[],
  progress: (step: string, detail?: string) => void,
): Promise<KernelModule[]> {
  const builtin = new Set(readLines(join(modulesDir, 'modules.builtin')).map(moduleName));
  const files = new Map<string, string>(); // name -> path relative to modulesDir
  const depFile = new Map<string, string[]>();
  const depLines = readLines(join(modulesDir, 'modules.dep'));
  if (depLines.length) {
    for (const line of depLines) {
      const [file = '', deps = ''] = line.split(':');
      files.set(moduleName(file), file);
      depFile.set(moduleName(file), deps.trim().split(/\s+/).filter(Boolean).map(moduleName));
    }
  } else {
    for (const f of await walk(join(modulesDir, 'kernel')))
      if (/\.ko(\.(xz|zst|gz))?$/.test(f)) files.set(moduleName(f), relative(modulesDir, f));
  }

  const order: KernelModule[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = async (name: string, neededBy?: string): Promise<void> => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new VesperError(ErrorCode.INTERNAL, `module dependency cycle through ${name}`);
    const file = files.get(name);
    if (!file) {
      if (builtin.has(name)) progress('modules', `${name} is built in`);
      else if (neededBy) throw new VesperError(ErrorCode.INTERNAL, `module ${neededBy} needs ${name}, which this kernel lacks`);
      else progress('modules', `${name} is not in this kernel, skipped`);
      state.set(name, 'done');
      return;
    }
    state.set(name, 'visiting');
    const data = await readModule(join(modulesDir, file));
    for (const dep of depFile.get(name) ?? modinfoDepends(data)) await visit(dep, name);
    state.set(name, 'done');
    order.push({ name, path: file.replace(/\.(xz|zst|gz)$/, ''), data });
  };
  for (const name of wanted) await visit(name.replace(/-/g, '_'));
  return order;
}

function readLines(path: string): string[] {
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean) : [];
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

async function readModule(path: string): Promise<Buffer> {
  if (path.endsWith('.gz')) return gunzipSync(await readFile(path));
  const tool = path.endsWith('.xz') ? 'xz' : path.endsWith('.zst') ? 'zstd' : null;
  if (!tool) return readFile(path);
  try {
    return (await execFileP(tool, ['-dc', path], { encoding: 'buffer', maxBuffer: 64 << 20 })).stdout;
  } catch (err) {
    throw new VesperError(ErrorCode.INTERNAL, `cannot decompress ${path} with ${tool}: ${(err as Error).message}`, '', { cause: err });
  }
}

/** The "depends=" field of a kernel module's .modinfo section (NUL-separated key=value strings). */
function modinfoDepends(ko: Buffer): string[] {
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const section = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: ko.readUInt32LE(o), offset: Number(ko.readBigUInt64LE(o + 0x18)), size: Number(ko.readBigUInt64LE(o + 0x20)) };
  };
  const names = section(ko.readUInt16LE(0x3e));
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const at = names.offset + s.name;
    if (ko.toString('latin1', at, ko.indexOf(0, at)) !== '.modinfo') continue;
    const fields = ko.toString('latin1', s.offset, s.offset + s.size).split('\0');
    const deps = fields.find((f) => f.startsWith('depends='))?.slice('depends='.length) ?? '';
    return deps.split(',').filter(Boolean).map(moduleName);
  }
  throw new VesperError(ErrorCode.INTERNAL, 'kernel module without a .modinfo section');
}
