// `vesper agent install|status|uninstall` against a real OpenSSH sshd on a loopback port (the
// agent then runs on this machine's kernel): the built CLI installs into a temporary prefix,
// the agent answers over SSH, a probe signed with the key the install pushed is loaded through
// the same SSH link vesperd uses, a real segfault arrives as a `signal` record, and uninstall
// leaves nothing behind: no prefix, no run dir, no agent process.
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { readProbeBundle, signModule } from '../../host/probes/package.js';
import { openAgentLink, type AgentLayout } from '../../host/ssh/agent-link.js';
import { SshConnection } from '../../host/ssh/connect.js';
import { installAgent, timeFreshInstall, type InstallReport } from '../../host/ssh/install.js';
import type { StatusReport } from '../../host/ssh/status.js';
import type { UninstallReport } from '../../host/ssh/uninstall.js';
import { readableCliCopy, whyCopyNotRunnableAs } from '../helpers/cli-copy.js';
import { alive } from '../helpers/ssh-agent.js';
import { Sshd, whyNoSshd } from '../helpers/sshd.js';
import { VESPER, type Run } from '../helpers/vesperd-process.js';
import { waitFor } from '../helpers/wait.js';

const NOBODY = { uid: 65534, gid: 65534 };
const why = whyNoSshd();
if (why) console.warn(`SKIP ssh install tests: ${why}`);

/** Processes whose command line names this path (the agent, its relays). */
function processesUnder(path: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (
        readFileSync(`/proc/${d}/cmdline`, 'utf8')
          .split('\0')
          .some((a) => a.startsWith(path))
      )
        out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

describe.skipIf(Boolean(why))('vesper agent install over a real sshd', () => {
  let sshd: Sshd;
  let dir: string;
  let layout: AgentLayout;
  let env: NodeJS.ProcessEnv;
  let targetArgs: string[];
  let agentPid = 0;
  const clients: AgentClient[] = [];
  const conns: SshConnection[] = [];

  const cli = (args: string[], more: string[] = []): Promise<Run> =>
    new Promise((resolve) => {
      execFile(
        process.execPath,
        [VESPER, 'agent', ...args, ...targetArgs, ...more],
        { timeout: 120_000, cwd: '/', env },
        (err, stdout, stderr) => {
          const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
          resolve({ code, stdout: String(stdout), stderr: String(stderr) });
        },
      );
    });
  const json = async <T>(args: string[]): Promise<T> => {
    const r = await cli([...args, '-o', 'json']);
    if (r.code !== 0) throw new Error(`vesper agent ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const connect = async (): Promise<SshConnection> => {
    const c = await SshConnection.connect({ target: sshd.target(), keyFile: sshd.clientKey, knownHosts: sshd.knownHosts });
    conns.push(c);
    return c;
  };

  beforeAll(async () => {
    if (!existsSync(VESPER)) throw new Error(`${VESPER} is missing: run npm run build`);
    sshd = await Sshd.start();
    dir = mkdtempSync(join(tmpdir(), 'vesper-ssh-install-'));
    layout = {
      prefix: join(dir, 'target', 'opt', 'vesper-agent'),
      runDir: join(dir, 'target', 'run', 'vesper-agent'),
      unit: 'vesper-agent-ssh.service',
    };
    env = { ...process.env, VESPER_KEY_DIR: join(dir, 'keys') };
    delete env.VESPER_SSH_PASSWORD;
    targetArgs = [
      '--ssh',
      `root@127.0.0.1:${sshd.port}`,
      '--key',
      sshd.clientKey,
      '--known-hosts',
      sshd.knownHosts,
      '--prefix',
      layout.prefix,
      '--run-dir',
      layout.runDir,
    ];
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const c of conns) c.close();
    // Whatever the tests left running (agents, relays), killed for sure: everything they
    // installed lives under dir, the main prefix and the fresh one.
    const kill = (pid: number): void => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone already */
      }
    };
    if (dir) processesUnder(dir).forEach(kill);
    if (agentPid) kill(agentPid);
    await sshd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("install refuses before it has a connection and creates no key: not in vesperd's key directory, not in a user's home", async (ctx) => {
    const keys = join(dir, 'keys'); // VESPER_KEY_DIR: vesperd's key directory, no key in it yet
    // The host key is unknown: refused (76) before anything is created.
    const emptyKnownHosts = join(dir, 'known_hosts.empty');
    writeFileSync(emptyKnownHosts, '');
    const unknown = await cli(['install'], ['--known-hosts', emptyKnownHosts]);
    expect(unknown.code, unknown.stderr).toBe(76);
    expect(unknown.stderr).toMatch(/VSP_SSH_HOSTKEY_UNKNOWN/);
    expect(existsSync(keys)).toBe(false);

    // A user other than root, without VESPER_KEY_DIR: the key would be vesperd's (/etc/vesper),
    // never one made in the user's home that vesperd does not have. Whether this machine's
    // /etc/vesper/host.pub is readable decides between a refusal (66) and getting as far as
    // the connection (nothing listens on port 1: 69); either way the home stays empty.
    const copy = readableCliCopy();
    try {
      const cannot = whyCopyNotRunnableAs(copy, NOBODY);
      if (cannot) {
        console.warn(`SKIP the non-root part: ${cannot}`);
        ctx.skip();
      }
      const home = join(dir, 'nobody-home');
      mkdirSync(home);
      chownSync(home, NOBODY.uid, NOBODY.gid);
      const asNobody = (extraEnv: NodeJS.ProcessEnv): Promise<Run> =>
        new Promise((resolve) => {
          const e: NodeJS.ProcessEnv = { PATH: process.env['PATH'], HOME: home, ...extraEnv };
          execFile(
            'setpriv',
            [
              `--reuid=${NOBODY.uid}`,
              `--regid=${NOBODY.gid}`,
              '--clear-groups',
              process.execPath,
              copy.vesper,
              'agent',
              'install',
              '--ssh',
              'root@127.0.0.1:1',
              '--known-hosts',
              join(home, 'known_hosts'),
              '--connect-timeout',
              '5s',
            ],
            { timeout: 60_000, cwd: '/', env: e },
            (err, stdout, stderr) => {
              const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
              resolve({ code, stdout: String(stdout), stderr: String(stderr) });
            },
          );
        });
      const r = await asNobody({});
      const systemPubReadable =
        spawnSync('setpriv', [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, '--clear-groups', 'cat', '/etc/vesper/host.pub']).status ===
        0;
      if (systemPubReadable) {
        expect(r.code, r.stderr).toBe(69);
        expect(r.stderr).toMatch(/VSP_SSH_CONNECT/);
      } else {
        expect(r.code, r.stderr).toBe(66);
        expect(r.stderr).toMatch(/^vesper: VSP_KEY_MISSING: .*\/etc\/vesper\/host\.pub.*nothing was installed.*VESPER_KEY_DIR/m);
      }
      expect(readdirSync(home)).toEqual([]);
      // With VESPER_KEY_DIR naming a key directory whose host.pub it may read (host.key is
      // root's, 0600), the same user gets past the key to the connection.
      const readable = join(dir, 'readable-keys');
      loadOrCreateHostKey(readable);
      chmodSync(dir, 0o755);
      const named = await asNobody({ VESPER_KEY_DIR: readable });
      expect(named.code, named.stderr).toBe(69);
      expect(named.stderr).toMatch(/VSP_SSH_CONNECT/);
      expect(readdirSync(home)).toEqual([]);
      expect(readdirSync(readable).sort()).toEqual(['host.key', 'host.pub']);
    } finally {
      copy.remove();
    }
  });

  it('an install cut off in the middle of the upload leaves nothing under a final name', async () => {
    const conn = await connect();
    const key = loadOrCreateHostKey(join(dir, 'cut-keys'));
    let cutAt = 0;
    const err = await installAgent(conn, {
      layout,
      hostPublicPem: key.publicPem,
      onProgress: (p) => {
        if (!cutAt && p.bytes > p.totalBytes / 4) {
          cutAt = p.bytes;
          conn.client.end(); // the link goes while the bundle is on its way
        }
      },
    }).then(
      () => null,
      (e: unknown) => e as { code?: string; message?: string },
    );
    expect(cutAt).toBeGreaterThan(0);
    expect(err?.code).toBe('VSP_SSH_DISCONNECTED');
    expect(err?.message).toMatch(/nothing was installed under its final name/);
    for (const f of ['vesper-agent.mjs', 'host.pub', 'bin/vesper-agent', 'bin/vesper-agent-relay', 'install.json'])
      expect(existsSync(join(layout.prefix, f)), f).toBe(false);
    expect(processesUnder(layout.prefix)).toEqual([]);
    // what had arrived stays under its temporary name (the next install removes it)
    expect(readdirSync(layout.prefix).filter((f) => f.includes('.vesper-tmp.'))).not.toEqual([]);
    const status = await cli(['status']);
    expect(status.code).toBe(3); // VSP_AGENT_NOT_INSTALLED
  });

  it("install pushes the agent and vesperd's key (created once connected), starts it through the relay (no systemd here) and sees it answer", async () => {
    expect(existsSync(join(dir, 'keys'))).toBe(false);
    const r = await cli(['install', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`created vesperd's signing key ${join(dir, 'keys')}/host.key`);
    const rep = JSON.parse(r.stdout) as InstallReport;
    agentPid = rep.agent.pid;
    expect(rep.systemd).toBe(false); // this machine has no systemd
    expect(rep.startedBy).toBe('relay');
    expect(rep.bootHint).toContain(`${layout.prefix}/bin/vesper-agent-relay`);
    expect(rep.agent.pid).toBeGreaterThan(0);
    expect(alive(rep.agent.pid)).toBe(true);
    expect(rep.agent.kernel).toBe(spawnSync('uname', ['-r']).stdout.toString().trim());
    expect(rep.bytesPushed).toBeGreaterThan(readFileSync(join(import.meta.dirname, '../../dist/guest-agent/vesper-agent.mjs')).length);
    // stderr says plainly that there is no systemd and how the agent starts; stdout is the result
    expect(r.stderr).toMatch(/has no systemd/);
    expect(r.stderr).toMatch(/started by the relay on the first link/);
    // the key the agent trusts is this host's
    expect(readFileSync(join(layout.prefix, 'host.pub'), 'utf8')).toBe(readFileSync(join(dir, 'keys', 'host.pub'), 'utf8'));
    expect(
      readFileSync(join(layout.prefix, 'vesper-agent.mjs')).equals(
        readFileSync(join(import.meta.dirname, '../../dist/guest-agent/vesper-agent.mjs')),
      ),
    ).toBe(true);
    // the agent keeps its run-state beside its socket (a successor reports what a crash lost)
    expect(readFileSync(`/proc/${rep.agent.pid}/cmdline`, 'utf8').split('\0')).toEqual(
      expect.arrayContaining(['--state-file', join(layout.runDir, 'run-state')]),
    );
    // no temporary file left anywhere in the prefix (the cut install's included)
    const leftovers = spawnSync('find', [layout.prefix, '-name', '*.vesper-tmp.*'], { encoding: 'utf8' }).stdout.trim();
    expect(leftovers).toBe('');
  });

  it('status says installed, the bundle as pushed, the agent answering with its pid', async () => {
    const s = await json<StatusReport>(['status']);
    expect(s.installed).toBe(true);
    expect(s.bundleIntact).toBe(true);
    expect(s.answering).toBe(true);
    expect(s.pid).toBe(agentPid);
    expect(s.agent?.pid).toBe(agentPid);
    const table = await cli(['status']);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/answering\s+0\.\d+\.\d+.*pid \d+/);
  });

  it('a probe signed with the pushed key loads over the SSH link, and a real segfault arrives as a signal record', async () => {
    const conn = await connect();
    const client = await openAgentLink(conn, { layout });
    clients.push(client);
    expect(client.hello.agentPid).toBe(agentPid);
    const records: AgentRecord[] = [];
    client.on('record', (r) => records.push(r));

    // A module signed by some other key is refused: the agent trusts exactly the pushed key.
    const stranger = loadOrCreateHostKey(join(dir, 'other-keys'));
    await expect(client.load(signModule(readProbeBundle('signal'), stranger))).rejects.toMatchObject({ code: 'VSP_PROBE_UNKNOWN_KEY' });

    const key = loadOrCreateHostKey(join(dir, 'keys'));
    const loaded = await client.load(signModule(readProbeBundle('signal'), key));
    expect(loaded.map((p) => p.name)).toEqual(['signal']);

    const prog = writeProgram(join(dir, 'segv'), segfaultProgram());
    const run = spawnSync(prog);
    expect(run.signal).toBe('SIGSEGV');
    const sig = await waitFor(
      'the SIGSEGV record over SSH',
      () => records.find((x) => x.kind === 'signal' && x.raw.signal?.target?.pid === run.pid),
      15_000,
      20,
    );
    expect(sig.probe).toBe('signal');
    expect(sig.raw.signal?.sig).toBe(11);
    expect(sig.raw.signal?.senderIsKernel).toBe(true);
    expect(sig.raw.signal?.target?.comm).toBe('segv');

    const s = await json<StatusReport>(['status']);
    expect(s.agent?.probes).toContain('signal#0');
    client.close();
  });

  it("install --push-node upgrades in place: this host's node pushed, the running agent restarted onto it", async () => {
    const r = await cli(['install', '--push-node', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as InstallReport;
    expect(rep.node).toMatchObject({ path: join(layout.prefix, 'node'), pushed: true });
    expect(rep.bytesPushed).toBeGreaterThan(10e6); // node itself
    expect(rep.unchanged).toEqual(expect.arrayContaining(['vesper-agent.mjs', 'host.pub', 'bin/vesper-agent-relay']));
    expect(rep.restarted).toBe(true);
    expect(rep.agent.pid).not.toBe(agentPid);
    expect(alive(agentPid)).toBe(false);
    agentPid = rep.agent.pid;
    // stderr is not a terminal here: progress as plain lines, ending at 100%
    expect(r.stderr).toMatch(/pushing .*\(100%\)/);
    expect(readFileSync(`/proc/${agentPid}/cmdline`, 'utf8').split('\0')[0]).toBe(join(layout.prefix, 'node'));
  });

  it('the same install again pushes nothing but its marker and keeps the agent running', async () => {
    const rep = await json<InstallReport>(['install', '--push-node']);
    expect(rep.unchanged).toEqual(
      expect.arrayContaining(['node', 'vesper-agent.mjs', 'host.pub', 'bin/vesper-agent', 'bin/vesper-agent-relay']),
    );
    expect(rep.bytesPushed).toBeLessThan(4096);
    expect(rep.restarted).toBe(false);
    expect(rep.agent.pid).toBe(agentPid);
  });

  it('a fresh install into an empty prefix, without the CLI (what the benchmark times), and gone again after', async () => {
    const conn = await connect();
    const root = join(dir, 'fresh');
    const { seconds, report } = await timeFreshInstall(conn, { root, hostPublicPem: loadOrCreateHostKey(join(dir, 'keys')).publicPem });
    expect(seconds).toBeGreaterThan(0);
    expect(seconds).toBeLessThan(30);
    expect(report.agent.pid).toBeGreaterThan(0);
    await waitFor('the fresh agent to be gone', () => !alive(report.agent.pid), 10_000, 50);
    expect(existsSync(join(root, 'opt', 'vesper-agent'))).toBe(false);
    expect(processesUnder(root)).toEqual([]);
  });

  it('uninstall stops the agent and removes prefix and run dir; a second uninstall is a no-op; status then says not installed', async () => {
    const u = await json<UninstallReport>(['uninstall']);
    expect(u.removed).toBe(true);
    expect(u.stopped).toContain(agentPid);
    expect(u.prefixRemoved).toBe(true);
    expect(u.runDirRemoved).toBe(true);
    expect(existsSync(layout.prefix)).toBe(false);
    expect(existsSync(layout.runDir)).toBe(false);
    await waitFor('the agent process to be gone', () => !alive(agentPid), 10_000, 50);
    expect(processesUnder(layout.prefix)).toEqual([]);

    const again = await cli(['uninstall']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/nothing to uninstall/);

    const st = await cli(['status']);
    expect(st.code).toBe(3);
    expect(st.stderr).toMatch(/VSP_AGENT_NOT_INSTALLED/);
  });
});
