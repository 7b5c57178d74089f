// Debian guest images for vesper's tests, built from Debian's archive alone with mmdebstrap:
// systemd, openssh-server, nginx, the vesper-agent package (npm run package), the rig's SSH key
// for root, a service that really crashes (Restart=on-failure) and one that is OOM-killed in its
// cgroup. Out come a compressed qcow2 disk plus the kernel and initrd for direct boot, cached
// under .cache/distro/ by the hash of every input (the archive's contents are not hashed: delete
// the cache, or bump BUILDER_VERSION, to take newer packages).
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createRequire } from 'node:module';
import { ErrorCode, VesperError } from '../../../proto/errors.js';
import { projectRoot } from '../../helpers/project-root.js';
import { crashOnSignalProgram, writeProgram } from '../demo/tiny-elf.js';

export type Distro = 'debian12' | 'debian13';
export const DISTROS: Record<Distro, { suite: string; kernelSeries: string }> = {
  debian12: { suite: 'bookworm', kernelSeries: '6.1' },
  debian13: { suite: 'trixie', kernelSeries: '6.12' },
};
export const isDistro = (s: string): s is Distro => Object.hasOwn(DISTROS, s);

/** Bump when the image changes in a way the hashed inputs do not capture. */
const BUILDER_VERSION = 1;
const PACKAGES = [
  'systemd',
  'systemd-sysv',
  'udev',
  'dbus',
  // what a Debian install has through systemd's Recommends: an SSH login gets its own
  // session-N.scope, so a command an administrator runs is told apart from the sshd service
  'libpam-systemd',
  'openssh-server',
  'nginx',
  // the cloud kernel: virtio, pvpanic, tracefs, kprobe_events, PSI; no i6300esb watchdog driver
  'linux-image-cloud-amd64',
  'initramfs-tools',
  'iproute2',
  'procps',
  'psmisc',
  'zstd',
];
/** Root filesystem size (sparse; the qcow2 holds only what is used). */
const ROOTFS_SIZE = '2G';
export const ROOT_LABEL = 'vesper-root';
/** loglevel=4: warnings and panics on the serial console, routine chatter not (it is slow). */
export const DISTRO_KERNEL_CMDLINE = `root=LABEL=${ROOT_LABEL} ro console=ttyS0 panic=0 loglevel=4`;
const MIRROR = process.env['VESPER_DEBIAN_MIRROR'] ?? 'http://deb.debian.org/debian';
const HERE = dirname(fileURLToPath(import.meta.url));

export interface DistroImage {
  distro: Distro;
  /** the compressed base disk; boot an overlay of it, never the file itself */
  disk: string;
  kernel: string;
  initrd: string;
  kernelRelease: string;
  /** the rig's SSH private key, root's authorized key in the image */
  sshKey: string;
  hash: string;
  cached: boolean;
  /** seconds this call spent building (0 when cached) */
  buildSeconds: number;
}

export interface BuildDistroImageOptions {
  /** The only host key the agent trusts (/etc/vesper/host.pub in the image). */
  hostPubKeyPem: string;
  /** Default: <repo>/.cache/distro */
  cacheDir?: string;
  onProgress?: (step: string, detail?: string) => void;
}

const execFileP = promisify(execFile);
// An open-file-description lock (fcntl): the kernel drops it when a builder dies however it dies.
const fsx = createRequire(import.meta.url)('fs-native-extensions') as {
  waitForLock(fd: number): Promise<void>;
  unlock(fd: number): void;
};

async function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 64 << 20, env: opts.env });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new VesperError(ErrorCode.INTERNAL, `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim().slice(-2000)}`, '', {
      cause: err,
    });
  }
}

/** The rig's SSH key pair (ed25519), made once per checkout under .cache/keys. */
export async function rigSshKey(): Promise<string> {
  const dir = join(projectRoot(), '.cache', 'keys');
  const key = join(dir, 'distro_ed25519');
  if (!existsSync(key)) {
    mkdirSync(dir, { recursive: true });
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vesper-test-rig', '-f', key]);
  }
  return key;
}

/** The vesper-agent .deb in dist/pkg/, built (npm run package's script) when missing or older than the agent. */
export async function agentDeb(progress: (step: string, detail?: string) => void): Promise<string> {
  const root = projectRoot();
  const pkgDir = join(root, 'dist', 'pkg');
  const agent = join(root, 'dist', 'guest-agent', 'vesper-agent.mjs');
  if (!existsSync(agent)) throw new VesperError(ErrorCode.INTERNAL, `${agent} is missing: run npm run build first`);
  const find = (): string | undefined => {
    if (!existsSync(pkgDir)) return undefined;
    const f = readdirSync(pkgDir).find((n) => /^vesper-agent_.*_amd64\.deb$/.test(n));
    return f ? join(pkgDir, f) : undefined;
  };
  let deb = find();
  if (!deb || statSync(deb).mtimeMs < statSync(agent).mtimeMs) {
    progress('agent package', 'npm run package (dist/pkg/)');
    await run(join(root, 'node_modules', '.bin', 'tsx'), [join(root, 'scripts', 'package.ts')]);
    deb = find();
    if (!deb) throw new VesperError(ErrorCode.INTERNAL, 'scripts/package.ts made no vesper-agent .deb');
  }
  return deb;
}

/** What goes into the agent package: its hash stands for the .deb (whose own bytes carry dates). */
function agentInputs(): Buffer[] {
  const root = projectRoot();
  const files = [
    'dist/guest-agent/vesper-agent.mjs',
    'guest-agent/systemd/vesper-agent.service',
    'guest-agent/systemd/90-vesper-agent.rules',
    ...readdirSync(join(root, 'packaging/deb/vesper-agent')).map((f) => `packaging/deb/vesper-agent/${f}`),
  ];
  return [...files.map((f) => readFileSync(join(root, f))), Buffer.from(process.version)];
}

/** mmdebstrap's output streamed as progress lines (it is quiet for minutes otherwise). */
function mmdebstrap(args: string[], env: NodeJS.ProcessEnv, progress: (step: string, detail?: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('mmdebstrap', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    const onLine = (chunk: Buffer): void => {
      const text = chunk.toString();
      tail = (tail + text).slice(-4000);
      for (const line of text.split('\n')) if (/^I: /.test(line)) progress('mmdebstrap', line.slice(3).trim());
    };
    p.stdout.on('data', onLine);
    p.stderr.on('data', onLine);
    p.on('error', (err) => reject(new VesperError(ErrorCode.INTERNAL, `mmdebstrap: ${err.message} (scripts/ensure-deps.sh installs it)`)));
    p.on('close', (code) =>
      code === 0 ? resolve() : reject(new VesperError(ErrorCode.INTERNAL, `mmdebstrap exited with ${code}: ${tail.trim()}`)),
    );
  });
}

/** Builds the image of `distro`, or returns the cached one. Concurrent callers wait for one build. */
export async function buildDistroImage(distro: Distro, o: BuildDistroImageOptions): Promise<DistroImage> {
  const progress = o.onProgress ?? (() => undefined);
  const cacheDir = o.cacheDir ?? join(projectRoot(), '.cache', 'distro');
  mkdirSync(cacheDir, { recursive: true });
  const sshKey = await rigSshKey();
  const customize = join(HERE, 'customize.sh');
  const crashy = crashOnSignalProgram();
  const h = createHash('sha256');
  for (const part of [
    `v${BUILDER_VERSION}`,
    distro,
    DISTROS[distro].suite,
    PACKAGES.join(','),
    ROOTFS_SIZE,
    MIRROR,
    readFileSync(customize),
    readFileSync(`${sshKey}.pub`),
    o.hostPubKeyPem,
    crashy,
    ...agentInputs(),
  ])
    h.update(part).update('\0');
  const hash = h.digest('hex').slice(0, 16);
  const dir = join(cacheDir, `${distro}-${hash}`);
  const result = (cached: boolean, buildSeconds: number): DistroImage => {
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { kernelRelease: string };
    return {
      distro,
      disk: join(dir, 'disk.qcow2'),
      kernel: join(dir, 'vmlinuz'),
      initrd: join(dir, 'initrd.img'),
      kernelRelease: m.kernelRelease,
      sshKey,
      hash,
      cached,
      buildSeconds,
    };
  };
  if (existsSync(join(dir, 'manifest.json'))) return result(true, 0);

  // One build per image at a time, across processes (test files run in parallel).
  const lockFd = openSync(join(cacheDir, `${distro}.lock`), 'a+');
  progress('image', `waiting for the ${distro} build lock`);
  await fsx.waitForLock(lockFd);
  try {
    if (existsSync(join(dir, 'manifest.json'))) return result(true, 0);
    const started = performance.now();
    const deb = await agentDeb(progress);
    const work = await mkdtemp(join(cacheDir, `.build-${distro}-`));
    try {
      const root = join(work, 'root');
      const crashyFile = writeProgram(join(work, 'vesper-crashy'), crashy);
      const hostPub = join(work, 'host.pub');
      await writeFile(hostPub, o.hostPubKeyPem);
      progress('mmdebstrap', `${DISTROS[distro].suite} from ${MIRROR}`);
      await mmdebstrap(
        [
          '--variant=apt',
          '--mode=root',
          `--include=${PACKAGES.join(',')}`,
          `--customize-hook=sh ${customize} "$1"`,
          DISTROS[distro].suite,
          root,
          MIRROR,
        ],
        {
          ...process.env,
          VESPER_SSH_PUB: `${sshKey}.pub`,
          VESPER_HOST_PUB: hostPub,
          VESPER_AGENT_DEB: deb,
          VESPER_CRASHY: crashyFile,
          VESPER_HOSTNAME: distro,
        },
        progress,
      );
      const boot = await readdir(join(root, 'boot'));
      const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-'));
      const initrd = boot.find((f) => f.startsWith('initrd.img-'));
      if (!vmlinuz || !initrd) throw new VesperError(ErrorCode.INTERNAL, `no kernel or initrd in the ${distro} tree (${boot.join(' ')})`);
      const kernelRelease = vmlinuz.slice('vmlinuz-'.length);
      const out = join(work, 'out');
      await run('mkdir', ['-p', out]);
      await copyFile(join(root, 'boot', vmlinuz), join(out, 'vmlinuz'));
      await copyFile(join(root, 'boot', initrd), join(out, 'initrd.img'));
      progress('disk', `ext4 ${ROOTFS_SIZE} from the tree`);
      const raw = join(work, 'disk.raw');
      await run('truncate', ['-s', ROOTFS_SIZE, raw]);
      await run('mkfs.ext4', ['-q', '-F', '-L', ROOT_LABEL, '-d', root, raw]);
      await rm(root, { recursive: true, force: true });
      progress('disk', 'compressed qcow2');
      await run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, join(out, 'disk.qcow2')]);
      await rm(raw, { force: true });
      const buildSeconds = (performance.now() - started) / 1000;
      await writeFile(
        join(out, 'manifest.json'),
        JSON.stringify({ distro, hash, kernelRelease, builtAt: new Date().toISOString(), buildSeconds }, null, 2),
      );
      await rename(out, dir);
      progress('image', `${distro} built in ${buildSeconds.toFixed(1)} s: kernel ${kernelRelease}, ${dir}`);
      return result(false, buildSeconds);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  } finally {
    fsx.unlock(lockFd);
    closeSync(lockFd);
  }
}

/** A qcow2 overlay of the image's disk: the guest writes there, the cached base stays as built. */
export async function overlayOf(image: DistroImage, file: string): Promise<string> {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', image.disk, file]);
  return file;
}

export async function readManifest(image: DistroImage): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(join(dirname(image.disk), 'manifest.json'), 'utf8')) as Record<string, unknown>;
}
