// The Debian packages, installed as a user would: `npm run package` builds them once; a fresh
// Debian 12 root made from Debian's archive by mmdebstrap (cached under .cache/debian12/, one
// tarball a day per content) gets `apt-get install ./vesper_*.deb`; `vesper --version` and
// `vesper daemon` run from it (the daemon on libvirt's test:///default driver, queried with
// `vesper list` and `vesper status`); a newer build installed over it keeps the event store and
// the host key; purge leaves nothing of vesper's. The agent package installs into the same
// kind of root with its unit, udev rule and runtime.
//
// Every command in the root runs as `unshare --mount --propagation private ... chroot`: its
// /proc and /dev mounts live in a mount namespace that dies with the command, so nothing stays
// mounted whatever happens to the test, and removing the root can never reach the host's /dev.
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VESPER_VERSION } from '../../proto/version.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { waitFor } from '../helpers/wait.js';
import { VmRig } from '../rigs/vm/rig.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MIRROR = 'http://deb.debian.org/debian';
/** Debian's own packages the host package depends on are in the base, so each run downloads nothing. */
const BASE_ARGS = ['--variant=apt', '--include=libvirt0,libvirt-clients,bash-completion,man-db', 'bookworm'];

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function archiveReachable(): boolean {
  const r = spawnSync('curl', ['-fsS', '-m', '10', '-o', '/dev/null', `${MIRROR}/dists/bookworm/InRelease`], { stdio: 'ignore' });
  return r.status === 0;
}

function whySkip(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (chroot, mounts)';
  for (const c of ['mmdebstrap', 'dpkg-deb', 'unshare', 'chroot', 'curl'])
    if (!has(c)) return `needs ${c} (apt-get install mmdebstrap util-linux curl)`;
  if (spawnSync('unshare', ['--mount', '--propagation', 'private', 'true'], { stdio: 'ignore' }).status !== 0)
    return 'cannot make a private mount namespace (unshare --mount)';
  if (!archiveReachable()) return `Debian's archive ${MIRROR} is not reachable`;
  return null;
}

const why = whySkip();

/** The base Debian 12 root as a tarball, built once a day per content and kept under .cache. */
function baseTarball(): string {
  const dir = join(ROOT, '.cache', 'debian12');
  mkdirSync(dir, { recursive: true });
  const day = new Date().toISOString().slice(0, 10);
  const key = createHash('sha256')
    .update(JSON.stringify([MIRROR, BASE_ARGS]))
    .digest('hex')
    .slice(0, 12);
  const tar = join(dir, `bookworm-${day}-${key}.tar`);
  if (existsSync(tar)) return tar;
  for (const old of readdirSync(dir)) if (old.endsWith('.tar')) rmSync(join(dir, old), { force: true }); // yesterday's
  const tmp = join(dir, `.part-${process.pid}-${key}.tar`); // mmdebstrap picks the format by the .tar suffix
  execFileSync('mmdebstrap', ['--quiet', ...BASE_ARGS, tmp, MIRROR], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
  renameSync(tmp, tar);
  return tar;
}

interface Run {
  status: number | null;
  out: string;
  err: string;
}

/**
 * The command that runs a shell script inside the root, with /proc and /dev mounted only for its
 * duration, and `binds` (host directories, e.g. libvirtd's socket directory) at the same paths.
 */
function rootCommand(root: string, script: string, binds: string[] = []): string[] {
  const wrapper =
    'set -e; R="$1"; S="$2"; shift 2; mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"; ' +
    'mount -t tmpfs tmpfs "$R/run"; for b in "$@"; do mkdir -p "$R$b"; mount --bind "$b" "$R$b"; done; ' +
    'exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/sh -c "$S"';
  // --pid --fork: when the command ends, every process it left behind (a daemon) is killed too
  return ['--mount', '--propagation', 'private', '--pid', '--fork', 'sh', '-c', wrapper, 'sh', root, script, ...binds];
}

/** Runs a shell script inside the root (rootCommand). */
function inRoot(root: string, script: string, timeoutMs = 120_000): Run {
  const r = spawnSync('unshare', rootCommand(root, script), {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

function ok(root: string, script: string, timeoutMs?: number): string {
  const r = inRoot(root, script, timeoutMs);
  if (r.status !== 0) throw new Error(`in the root: ${script}\nexit ${r.status}\n${r.out}\n${r.err}`);
  return r.out;
}

function freshRoot(tar: string, into: string): string {
  const root = join(into, 'root');
  mkdirSync(root);
  execFileSync('tar', ['-C', root, '-xf', tar], { stdio: 'inherit' });
  return root;
}

describe.skipIf(Boolean(why))('the Debian packages in a fresh Debian 12 root', () => {
  let work = '';
  let hostDeb = '';
  let agentDeb = '';
  /** a second build of the same tree with a higher Debian revision: what an upgrade installs */
  let newerDeb = '';
  let tar = '';

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'vesper-pkg-')); // the roots: ~0.5 GB each
    // Built once for the whole file; the base root in parallel would fight for the 2 cores.
    hostDeb = join(ROOT, 'dist', 'pkg', `vesper_${VESPER_VERSION}-1_amd64.deb`);
    agentDeb = join(ROOT, 'dist', 'pkg', `vesper-agent_${VESPER_VERSION}-1_amd64.deb`);
    // VESPER_TEST_PREBUILT_PKG=1 takes the packages in dist/pkg as they are (iterating on the test)
    if (!(process.env['VESPER_TEST_PREBUILT_PKG'] === '1' && existsSync(hostDeb) && existsSync(agentDeb)))
      execFileSync('npm', ['run', '--silent', 'package'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
    // A real newer build (scripts/package.ts again, revision 2), not a copy with its version edited.
    const pkg2 = join(work, 'pkg2');
    execFileSync(process.execPath, [join(ROOT, 'node_modules/tsx/dist/cli.mjs'), join(ROOT, 'scripts/package.ts')], {
      cwd: ROOT,
      env: { ...process.env, VESPER_DEB_REVISION: '2', VESPER_PKG_DIR: pkg2 },
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 600_000,
    });
    newerDeb = join(pkg2, `vesper_${VESPER_VERSION}-2_amd64.deb`);
    tar = baseTarball();
  }, 1_200_000);

  afterAll(() => {
    // Nothing is mounted outside the commands' own namespaces; --one-file-system all the same.
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('installs with apt, runs the CLI and the daemon, upgrades keeping store and key, purges to nothing', () => {
    const root = freshRoot(tar, work);
    copyFileSync(hostDeb, join(root, 'tmp', 'vesper_1.deb'));
    copyFileSync(newerDeb, join(root, 'tmp', 'vesper_2.deb'));
    const before = ok(root, 'find / -xdev \\( -path /proc -o -path /tmp \\) -prune -o -print | sort');

    // Install: only Debian's archive is configured in the root.
    ok(root, 'apt-get install -y -q /tmp/vesper_1.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    expect(ok(root, 'vesper --version').trim()).toBe(VESPER_VERSION);
    expect(ok(root, 'getent group vesper')).toMatch(/^vesper:x:\d+:/);
    expect(ok(root, "dpkg-query -W -f '${Conffiles}' vesper")).toContain('/etc/vesper/vesper.yaml');
    expect(ok(root, 'ls /usr/lib/vesper/probes | sort').trim().split('\n')).toEqual(readdirSync(join(ROOT, 'dist', 'probes')).sort());
    expect(ok(root, 'zcat /usr/share/man/man1/vesper.1.gz')).toContain('.SS vesper channel add');
    expect(
      ok(
        root,
        `bash -c '. /usr/share/bash-completion/completions/vesper; COMP_WORDS=(vesper cha); COMP_CWORD=1; _vesper; echo "\${COMPREPLY[*]}"'`,
      ).trim(),
    ).toBe('channel');
    expect(ok(root, 'test -x /usr/lib/vesper/alert-agent.sh && echo yes').trim()).toBe('yes');

    // The daemon, from the package, on libvirt's test driver; the CLI talks to it.
    const daemon = ok(
      root,
      [
        "printf 'libvirt:\\n  uri: test:///default\\n' > /tmp/t.yaml",
        'vesper daemon --config /tmp/t.yaml > /tmp/d.log 2>&1 & pid=$!',
        'i=0; while [ ! -S /run/vesper/vesperd.sock ]; do i=$((i+1)); [ $i -gt 300 ] && { cat /tmp/d.log; exit 1; }; sleep 0.1; done',
        'vesper list -o json; echo ---; vesper probes -o json; echo ---',
        // the Pacemaker alert agent as Pacemaker runs it: the package's small sender on its own
        // runtime (no pacemaker section here, so nobody listens: the sender's own error comes back)
        'CRM_alert_kind=node CRM_alert_node=n1 CRM_alert_desc=lost VESPER_ALERT_TIMEOUT=2 VESPER_ALERT_LOG=/tmp/alert.log sh -x /usr/lib/vesper/alert-agent.sh 2>&1 || true; echo ---; cat /tmp/alert.log; echo ---',
        'kill -TERM $pid; wait $pid || true',
      ].join('\n'),
      120_000,
    );
    const [list, probes, alertTrace, alertLog] = daemon.split('---\n');
    expect(alertTrace).toMatch(/\/usr\/lib\/vesper\/node \/usr\/lib\/vesper\/host\/vesper-alert\.mjs --timeout 2s/);
    expect(alertLog).toMatch(/kind=node .*not sent \(exit \d+\): vesper: VSP_[A-Z_]+: /);
    expect(list).toContain('"test"'); // the test driver's one domain
    // the daemon's catalogue is the installed one (/usr/lib/vesper/probes), no source tree in the root
    const names = readdirSync(join(ROOT, 'dist', 'probes')).filter((f) => f.endsWith('.manifest.json'));
    for (const f of names) expect(probes).toContain(`"${f.slice(0, -'.manifest.json'.length)}"`);
    expect(inRoot(root, 'ls / /usr/lib/vesper | grep -x -e package.json -e dist').status).toBe(1);
    expect(ok(root, 'test -s /var/lib/vesper/events.db && test -s /etc/vesper/host.key && echo yes').trim()).toBe('yes');
    const key = ok(root, 'sha256sum /etc/vesper/host.key /etc/vesper/host.pub /var/lib/vesper/events.db');

    // A newer build over it: the same key, the same store.
    ok(root, 'apt-get install -y -q /tmp/vesper_2.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    expect(ok(root, "dpkg-query -W -f '${Version}' vesper")).toBe(`${VESPER_VERSION}-2`);
    expect(ok(root, 'sha256sum /etc/vesper/host.key /etc/vesper/host.pub /var/lib/vesper/events.db')).toBe(key);
    expect(ok(root, 'vesper --version').trim()).toBe(VESPER_VERSION);

    // Purge: nothing of vesper's remains, not even the group.
    ok(root, 'apt-get purge -y -q vesper > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    ok(root, 'rm -f /tmp/vesper_1.deb /tmp/vesper_2.deb /tmp/t.yaml /tmp/d.log /tmp/apt.log /tmp/alert.log');
    expect(inRoot(root, 'getent group vesper').status).toBe(2);
    const after = ok(root, 'find / -xdev \\( -path /proc -o -path /tmp \\) -prune -o -print | sort');
    // what is there now and was not before, apt's and dpkg's own records aside, and the backup
    // that groupadd/groupdel keep of the file they changed (/etc/gshadow-)
    const had = new Set(before.split('\n'));
    const added = after
      .split('\n')
      .filter((p) => !had.has(p) && !/^\/var\/(lib\/apt|lib\/dpkg|cache|log)\/|^\/etc\/(group|gshadow|passwd|shadow)-$/.test(p));
    expect(added).toEqual([]);
    expect(ok(root, 'grep -l vesper /etc/group /etc/gshadow /etc/passwd || echo none').trim()).toBe('none');
    // apt's own bookkeeping and the dependencies apt installed may remain; vesper's files may not
    expect(ok(root, "dpkg-query -W -f '${Status}' vesper 2>/dev/null || echo gone").trim()).toMatch(/gone|not-installed/);
  }, 900_000);

  it('the agent package installs its runtime, unit and udev rule, and purges to nothing', () => {
    const root = join(work, 'agent-root');
    mkdirSync(root);
    execFileSync('tar', ['-C', root, '-xf', tar]);
    copyFileSync(agentDeb, join(root, 'tmp', 'vesper-agent.deb'));
    ok(root, 'apt-get install -y -q /tmp/vesper-agent.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    expect(ok(root, '/usr/lib/vesper-agent/node /usr/lib/vesper-agent/vesper-agent.mjs --version').trim()).toBe(VESPER_VERSION);
    expect(ok(root, 'cat /lib/udev/rules.d/90-vesper-agent.rules')).toContain('ENV{SYSTEMD_WANTS}+="vesper-agent.service"');
    expect(ok(root, 'grep ^ExecStart= /lib/systemd/system/vesper-agent.service')).toContain(
      '/usr/lib/vesper-agent/node /usr/lib/vesper-agent/vesper-agent.mjs',
    );
    // no host key copied in: the agent pins the first host's in its state directory (docs/trust.md)
    expect(ok(root, 'grep ^ExecStart= /lib/systemd/system/vesper-agent.service')).toContain('--state-dir /var/lib/vesper-agent');
    expect(ok(root, 'stat -c %a /var/lib/vesper-agent').trim()).toBe('700');
    const size = Number(ok(root, "dpkg-query -W -f '${Installed-Size}' vesper-agent"));
    expect(size).toBeGreaterThan(1000);
    console.error(`vesper-agent installed size: ${(size / 1024).toFixed(1)} MiB`);
    ok(root, 'apt-get purge -y -q vesper-agent > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    ok(root, 'rm -f /tmp/vesper-agent.deb /tmp/apt.log');
    expect(ok(root, 'find / -xdev \\( -path /proc -o -path /tmp \\) -prune -o -print | grep -i vesper || echo none').trim()).toBe('none');
  }, 600_000);
  it('vesperd from the installed package attaches a probe to a real guest, whose fresh agent enrols, and a real SIGSEGV arrives', async () => {
    const root = join(work, 'guest-root');
    mkdirSync(root);
    execFileSync('tar', ['-C', root, '-xf', tar]);
    copyFileSync(hostDeb, join(root, 'tmp', 'vesper.deb'));
    ok(root, 'apt-get install -y -q /tmp/vesper.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }', 300_000);
    // A guest whose agent has no key (as its package starts it): it enrols with the packaged vesperd.
    const rig = new VmRig({ testHelpers: true, enrol: true, onProgress: (s, d) => console.warn(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    let daemon: ReturnType<typeof spawn> | null = null;
    try {
      await rig.prepare();
      await rig.startOnly();
      await rig.waitFaultHelper();
      // In the root: libvirtd's socket directory and the rig's (the channel socket) at their own paths.
      const script = [
        'set -e',
        `printf 'libvirt:\\n  uri: qemu:///system\\n  domains: [${rig.name}]\\nchannel:\\n  reconnect_max: 1s\\n' > /tmp/g.yaml`,
        'vesper daemon --config /tmp/g.yaml > /tmp/d.log 2>&1 & pid=$!',
        'i=0; while [ ! -S /run/vesper/vesperd.sock ]; do i=$((i+1)); [ $i -gt 600 ] && { cat /tmp/d.log; exit 1; }; sleep 0.1; done',
        `i=0; until vesper status ${rig.name} -o json | grep -q '"link":"connected"'; do i=$((i+1)); [ $i -gt 240 ] && { vesper status ${rig.name}; cat /tmp/d.log; exit 1; }; sleep 0.5; done`,
        `vesper status ${rig.name}`,
        `vesper attach ${rig.name} signal --param comms=vesper-demo-svc`,
        // the probe table's row: PROBE INSTANCES LOADED PARAMS (plain columns, stdout not a terminal)
        `i=0; until vesper status ${rig.name} | grep -Eq '^signal +[0-9]+ +yes( |$)'; do i=$((i+1)); [ $i -gt 240 ] && { vesper status ${rig.name}; exit 1; }; sleep 0.5; done`,
        'echo ready > /tmp/ready',
        // the test causes the fault now; the record must reach the packaged vesperd's store
        `i=0; until vesper events --vm ${rig.name} --plugin signal -o json | grep '"sig":11' ; do i=$((i+1)); [ $i -gt 120 ] && { echo no signal record; cat /tmp/d.log; exit 1; }; sleep 0.5; done`,
        'kill -TERM $pid; wait $pid || true',
      ].join('\n');
      let out = '';
      const done = new Promise<number | null>((resolve) => {
        daemon = spawn('unshare', rootCommand(root, script, ['/run/libvirt', rig.dir]), { stdio: ['ignore', 'pipe', 'pipe'] });
        daemon.stdout!.on('data', (c: Buffer) => (out += c.toString()));
        daemon.stderr!.on('data', (c: Buffer) => (out += c.toString()));
        daemon.on('exit', (code) => resolve(code));
      });
      const exited = { code: undefined as number | null | undefined };
      void done.then((c) => (exited.code = c));
      await waitFor(
        'the packaged vesperd has the probe loaded in the guest',
        () => existsSync(join(root, 'tmp', 'ready')) || exited.code !== undefined,
        240_000,
        500,
      ).catch((err: Error) => {
        // say what the packaged vesperd and its CLI said, not only that time ran out
        const log = existsSync(join(root, 'tmp', 'd.log')) ? readFileSync(join(root, 'tmp', 'd.log'), 'utf8') : '(no log)';
        throw new Error(`${err.message}\n--- script output:\n${out}\n--- vesperd log (last 4 KB):\n${log.slice(-4096)}`);
      });
      expect(exited.code, out).toBeUndefined();
      expect(out).toMatch(/agent trusts\s+this host's key [0-9a-f]{16}/);
      const [pid] = numbersIn(await rig.fault('segv'));
      const code = await Promise.race([done, new Promise<string>((r) => setTimeout(() => r('timeout'), 120_000))]);
      expect(code, out).toBe(0);
      expect(out).toMatch(new RegExp(`"pid":${pid}\\b`));
      // the key the guest pinned is the installed package's host key
      const hostPub = ok(root, 'cat /etc/vesper/host.pub');
      const pinned = await rig.fault('enrol-show', 60_000);
      const { keyId } = await import('../../proto/module-digest.js');
      expect(pinned).toContain(`pinned host key ${keyId(hostPub)}`);
    } finally {
      (daemon as ReturnType<typeof spawn> | null)?.kill('SIGKILL');
      await rig.stop();
    }
  }, 900_000);
});

if (why) {
  describe('the Debian packages', () => {
    it.skip(`skipped: ${why}`, () => undefined);
  });
}
