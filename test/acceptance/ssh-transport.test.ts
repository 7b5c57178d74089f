// vesperd reaching an agent over SSH: a real OpenSSH sshd on a loopback port with throwaway
// keys, the agent on this machine's kernel (put there by installAgent, started by its relay),
// vesperd and the vesper CLI as the processes users run, libvirt's test driver as the
// hypervisor (its one domain, `test`, has no vesper channel; named as an SSH target too, it is
// reached over SSH). Real kernel events: a tiny ELF that stores to address 0, SIGUSR1 storms.
// The link is broken three ways mid-stream (the exec channel's relay killed, the SSH session's
// sshd processes killed, the sshd session frozen so that only the SSH keepalive can tell) and
// the store must hold every record exactly once; the agent is killed and its probes come back;
// a changed host key is refused, told once and shown.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { projectRoot } from '../helpers/project-root.js';
import { DEFAULT_AGENT_LAYOUT } from '../../host/ssh/agent-link.js';
import { SshConnection } from '../../host/ssh/connect.js';
import { installAgent } from '../../host/ssh/install.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { agentPid, stopAgent } from '../helpers/ssh-agent.js';
import { Sshd, whyNoSshd } from '../helpers/sshd.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { USR1_STORM_PROBE, VesperdProcess, writeVesperdConfig, type EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess() || whyNoSshd();
if (why) console.warn(`SKIP ssh transport tests: ${why}`);

const VM = 'ssh-guest';

/** Every process, its parent and its command line. */
function processTable(): Map<number, { ppid: number; cmd: string; comm: string }> {
  const out = new Map<number, { ppid: number; cmd: string; comm: string }>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      out.set(Number(d), { ppid, comm, cmd: readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ') });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The relays running this prefix's bundle (one per exec channel). */
function relays(prefix: string): number[] {
  return [...processTable()].filter(([, p]) => p.cmd.includes(`${prefix}/vesper-agent.mjs relay`)).map(([pid]) => pid);
}

/** The sshd session processes above a relay (not the listener, started with -f CONFIG). */
function sessionOf(relay: number): number[] {
  const t = processTable();
  const out: number[] = [];
  let p = t.get(relay)?.ppid;
  for (let hops = 0; p !== undefined && p > 1 && hops < 8; hops++) {
    const e = t.get(p);
    if (!e || !e.comm.startsWith('sshd') || e.cmd.includes(' -f ')) break;
    out.push(p);
    p = e.ppid;
  }
  return out;
}

function kill(pids: number[], sig: NodeJS.Signals): void {
  for (const pid of pids)
    try {
      process.kill(pid, sig);
    } catch {
      /* gone */
    }
}

/** A process that ignores SIGUSR1, so that signals can be sent to it as fast as the kernel takes them. */
function ignoringTarget(): Promise<ChildProcess> {
  const p = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
  return sleep(300).then(() => p);
}

/**
 * SIGUSR1s to pid, `burst` every 20 ms (bursts the kernel's per-CPU trace buffer holds while the
 * agent drains it), from now until stop() and at least `min` of them: stop() resolves with how
 * many were sent. Bounded: ten minutes at most.
 */
function storm(pid: number, min: number, burst = 100): { sent: () => number; stop: () => Promise<number> } {
  let sent = 0;
  let stopping = false;
  const done = (async () => {
    const deadline = Date.now() + 600_000;
    while ((!stopping || sent < min) && Date.now() < deadline) {
      for (let i = 0; i < burst; i++) process.kill(pid, 'SIGUSR1');
      sent += burst;
      await sleep(20);
    }
    return sent;
  })();
  return {
    sent: () => sent,
    stop: () => {
      stopping = true;
      return done;
    },
  };
}

describe.skipIf(Boolean(why))('vesperd over SSH (real sshd, real kernel events)', () => {
  let dir: string;
  let sshd: Sshd;
  let vesperd: VesperdProcess;
  let prefix: string;
  let runDir: string;
  let storePath: string;
  let segv: string;
  let target: ChildProcess | null = null;
  const frozen: number[] = [];

  const status = (): Promise<Record<string, unknown>> => vesperd.json<Record<string, unknown>>(['status', VM]);
  const linked = (): Promise<boolean> =>
    status().then(
      (s) => s.link === 'connected',
      () => false,
    );
  const channelEvents = async (): Promise<EventLine[]> =>
    (await vesperd.ok(['events', '--vm', VM, '--plugin', 'channel', '-o', 'json']))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as EventLine);

  beforeAll(async () => {
    dir = mkdtempSync('/tmp/vesper-ssh-transport-');
    prefix = join(dir, 'target', 'opt');
    runDir = join(dir, 'target', 'run');
    storePath = join(dir, 'events.db');
    // The agent verifies modules with the key vesperd signs them with (VESPER_KEY_DIR below).
    const key = loadOrCreateHostKey(join(projectRoot(), '.cache', 'keys'));
    segv = writeProgram(join(dir, 'vesper-segv'), segfaultProgram());
    sshd = await Sshd.start();
    // Installed the way `vesper agent install` does it (no systemd here: the relay starts it).
    const conn = await SshConnection.connect({ target: sshd.target(), keyFile: sshd.clientKey, knownHosts: sshd.knownHosts });
    try {
      await installAgent(conn, { layout: { ...DEFAULT_AGENT_LAYOUT, prefix, runDir }, hostPublicPem: key.publicPem });
    } finally {
      conn.close();
    }
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket: join(dir, 'vesperd.sock'),
      store: storePath,
      domains: ['*'], // libvirt's test driver: its domains are this test's own
      more: {
        libvirt: { uri: 'test:///default' },
        ssh: {
          connect_timeout: '5s',
          keepalive: '500ms',
          keepalive_count_max: 2,
          targets: {
            [VM]: {
              target: `root@127.0.0.1:${sshd.port}`,
              key: sshd.clientKey,
              known_hosts: sshd.knownHosts,
              prefix,
              run_dir: runDir,
            },
            // libvirt's test driver has a running domain `test` without the vesper channel: reached
            // over SSH, where no agent is installed under this prefix.
            test: {
              target: `root@127.0.0.1:${sshd.port}`,
              key: sshd.clientKey,
              known_hosts: sshd.knownHosts,
              prefix: join(dir, 'nowhere'),
            },
          },
        },
      },
    });
    vesperd = new VesperdProcess(config, join(dir, 'vesperd.sock'));
    await vesperd.start();
    await waitFor('vesperd links to the agent over SSH', linked, 60_000, 200).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${(await vesperd.cli(['status', VM, '-o', 'json'])).stdout}\n${vesperd.log.slice(-3000)}`);
    });
  }, 120_000);

  afterAll(async () => {
    kill(frozen, 'SIGCONT');
    target?.kill('SIGKILL');
    await vesperd?.killAll();
    await sshd?.stop();
    if (runDir) await stopAgent(runDir);
    if (dir && process.env['VESPER_TEST_VERBOSE']) console.warn(vesperd?.log);
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('shows the VM with its transport, target and host key; a libvirt domain without the channel goes over SSH, its failure told once', async () => {
    const list = await vesperd.json<Array<Record<string, unknown>>>(['list']);
    const mine = list.find((v) => v.name === VM);
    expect(mine).toMatchObject({ state: 'external', link: 'connected', transport: 'ssh', target: `root@127.0.0.1:${sshd.port}` });
    // A libvirt domain without the channel and with an SSH target is reached over SSH; its
    // failure (no agent there) is in its status and in the log once, not at every retry.
    expect(list.find((v) => v.name === 'test')).toMatchObject({ state: 'running', link: 'connecting', transport: 'ssh' });
    const t = await vesperd.json<Record<string, unknown>>(['status', 'test']);
    expect(t).toMatchObject({ linkErrorCode: 'VSP_AGENT_NOT_INSTALLED', hasChannel: false });
    expect(String(t.linkError)).toContain(`${join(dir, 'nowhere')}/bin/vesper-agent-relay`);
    expect(vesperd.log.split('\n').filter((l) => l.includes('VSP_AGENT_NOT_INSTALLED')).length).toBe(1);
    const st = await status();
    expect(st.hostKey).toBe(`${sshd.fingerprint} (ssh-ed25519, known_hosts)`);
    expect(st.agentPid).toBe(agentPid(runDir));
    expect(st.linkErrorCode).toBeNull();
    const table = await vesperd.ok(['list']);
    expect(table).toContain(`ssh root@127.0.0.1:${sshd.port}`);
    const connected = (await channelEvents()).filter((e) => e.event === 'agent-connected');
    expect(connected.length).toBe(1);
  });

  it('attach signal over SSH, a real segfault, and `vesper events -f -o json` shows it', async () => {
    const a = await vesperd.cli(['attach', VM, 'signal', '--param', 'signals=SEGV', '--param', 'comms=vesper-segv']);
    expect(a.code, a.stderr).toBe(0);
    const st = await status();
    expect(st.attached).toEqual([expect.objectContaining({ name: 'signal', loaded: true })]);
    const f = vesperd.follow(['--vm', VM, '--plugin', 'signal']);
    try {
      await sleep(500);
      const p = spawnSync(segv, { timeout: 5000 });
      expect(p.signal).toBe('SIGSEGV');
      const ev = await waitFor(
        'the SIGSEGV in events -f',
        () => f.lines.find((e) => (e.payload as { signal?: { sig: number } } | null)?.signal?.sig === 11),
        15_000,
      );
      expect(ev.vm).toBe(VM);
      expect(ev.seq).toBeGreaterThan(0);
      expect(ev.payload).toMatchObject({ signal: { sig: 11, code: 1, senderIsKernel: true, target: { comm: 'vesper-segv' } } });
    } finally {
      f.stop();
    }
    const stored = (await vesperd.ok(['events', '--vm', VM, '--plugin', 'signal', '-o', 'json'])).split('\n').filter(Boolean);
    expect(stored.length).toBe(1);
  });

  it('param, filter, analyze and detach work on an SSH VM as on any other', async () => {
    // param set: the agent's probe gets it now, and status remembers it
    const ps = await vesperd.cli(['param', 'set', VM, 'signal', 'signals=SEGV,ABRT']);
    expect(ps.code, ps.stderr).toBe(0);
    expect(await vesperd.json<Record<string, string>>(['param', 'get', VM, 'signal'])).toMatchObject({ signals: 'SEGV,ABRT' });
    // filter: this VM's signals discarded, still stored, marked
    const fs = await vesperd.cli(['filter', 'set', '--vm', VM, 'signal', '*', 'signal', 'discard']);
    expect(fs.code, fs.stderr).toBe(0);
    const p = spawnSync(segv, { timeout: 5000 });
    expect(p.signal).toBe('SIGSEGV');
    const signals = async (): Promise<EventLine[]> =>
      (await vesperd.ok(['events', '--vm', VM, '--plugin', 'signal', '--all', '-o', 'json']))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as EventLine);
    const discarded = await waitFor(
      'the discarded SIGSEGV',
      async () =>
        (await signals()).find(
          (e) => e.disposition === 'discard' && (e.payload as { signal?: { target: { pid: number } } }).signal?.target.pid === p.pid,
        ),
      15_000,
      200,
    );
    expect(discarded.vm).toBe(VM);
    expect((await vesperd.cli(['filter', 'clear', '--vm', VM, 'signal', '*', 'signal'])).code).toBe(0);
    // analyze: the last failure of this VM is a kernel-raised SIGSEGV
    const a = await vesperd.json<{ vm: string; verdicts: unknown[]; eventCount: number }>(['analyze', VM, '--last']);
    expect(a.vm).toBe(VM);
    expect(a.eventCount).toBeGreaterThan(0);
    expect(JSON.stringify(a.verdicts)).toContain('vesper-segv');
    // detach: unloaded from the agent, gone from status
    expect((await vesperd.cli(['detach', VM, 'signal'])).code).toBe(0);
    expect((await status()).attached).toEqual([]);
    expect(await vesperd.json<unknown[]>(['filter', 'list'])).toEqual([]);
  });

  it('the link broken three ways mid-stream: vesperd relinks by itself and the store holds every record once', async () => {
    target = await ignoringTarget();
    const tpid = target.pid!;
    const a = await vesperd.cli(['attach', VM, ...USR1_STORM_PROBE]);
    expect(a.code, a.stderr).toBe(0);
    const lostBefore = (await channelEvents()).filter((e) => e.event === 'agent-lost').length;
    const db = openStoreForSql(storePath);
    const stormRows = (): number =>
      (
        db
          .prepare(
            "SELECT count(*) AS n FROM events WHERE vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
          )
          .get(VM, tpid) as { n: number }
      ).n;
    const relinkedAfter = async (what: string, breakIt: () => void | Promise<void>): Promise<void> => {
      const agentBefore = agentPid(runDir);
      const before = stormRows();
      const count = async (event: string): Promise<number> => (await channelEvents()).filter((e) => e.event === event).length;
      const [lost, connected] = [await count('agent-lost'), await count('agent-connected')];
      await breakIt();
      await waitFor(`vesperd notices (${what})`, async () => (await count('agent-lost')) > lost, 15_000, 100);
      await waitFor(`vesperd relinks (${what})`, async () => (await count('agent-connected')) > connected && (await linked()), 30_000, 100);
      // The same agent: its ring, not a new one, is what resends.
      expect(agentPid(runDir)).toBe(agentBefore);
      expect(stormRows()).toBeGreaterThan(before); // records flowed across the break
    };
    const MIN = 12_000;
    let N = 0;
    const st = storm(tpid, MIN);
    try {
      await waitFor('the storm under way', () => stormRows() > 1000, 15_000, 20);
      // The sshd session processes of the live link: one per SSH connection.
      const session = (): string =>
        relays(prefix)
          .flatMap(sessionOf)
          .sort((x, y) => x - y)
          .join(',');
      // 1. the exec channel's end: the relay dies, the SSH connection stays and carries the next link
      const first = session();
      expect(first).not.toBe('');
      await relinkedAfter('relay killed', () => kill(relays(prefix), 'SIGKILL'));
      expect(session()).toBe(first);
      // 2. the SSH connection's end: the sshd processes of the session die; a new connection
      await relinkedAfter('sshd session killed', () => kill(relays(prefix).flatMap(sessionOf), 'SIGKILL'));
      expect(session()).not.toBe(first);
      // 3. a peer that stops answering: only the SSH keepalive (500 ms × 2) can tell
      await relinkedAfter('sshd session frozen', () => {
        const s = relays(prefix).flatMap(sessionOf);
        expect(s.length).toBeGreaterThan(0);
        frozen.push(...s);
        kill(s, 'SIGSTOP');
      });
      kill(frozen.splice(0), 'SIGCONT');
      N = await st.stop();
      expect(N).toBeGreaterThanOrEqual(MIN);
      await waitFor(`${N} storm records stored`, () => stormRows() >= N, 60_000, 200).catch((e: Error) => {
        throw new Error(`${e.message}: have ${stormRows()}\n${vesperd.log.slice(-4000)}`);
      });
      await sleep(1500); // anything more (a duplicate slipping through) would show now
      expect(stormRows()).toBe(N);
      // Exactly once, none lost: N distinct sequence numbers of one agent run, no loss record.
      const runs = db
        .prepare(
          "SELECT agent_run AS run, count(DISTINCT seq) AS n, count(*) AS rows FROM events WHERE vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ? GROUP BY agent_run",
        )
        .all(VM, tpid) as Array<{ run: string; n: number; rows: number }>;
      expect(runs).toEqual([{ run: expect.stringMatching(/\/\d+$/), n: N, rows: N }]);
      const losses = db.prepare("SELECT count(*) AS n FROM events WHERE vm = ? AND event IN ('loss', 'records-lost')").get(VM) as {
        n: number;
      };
      expect(losses.n).toBe(0);
    } finally {
      kill(frozen.splice(0), 'SIGCONT');
      await st.stop();
      db.close();
    }
    const ch = await channelEvents();
    expect(ch.filter((e) => e.event === 'agent-lost').length - lostBefore).toBeGreaterThanOrEqual(3);
    const last = ch.filter((e) => e.event === 'agent-connected').at(-1)!;
    expect(last.payload).toMatchObject({ agentRestarted: false, repushed: [] });
  }, 180_000);

  it('the agent killed: the relay starts a new one and vesperd pushes the attached probe again', async () => {
    const old = agentPid(runDir);
    expect(old).toBeGreaterThan(0);
    expect(await stopAgent(runDir, 'SIGKILL')).toBe(true);
    await waitFor(
      'a new agent, linked, with the probe loaded',
      async () => {
        const s = await status().catch(() => null);
        return (
          s?.link === 'connected' &&
          s.agentPid !== old &&
          (s.attached as Array<{ name: string; loaded: boolean }>).some((p) => p.name === 'signal' && p.loaded)
        );
      },
      30_000,
      200,
    );
    const ch = await channelEvents();
    const back = ch.filter((e) => e.event === 'agent-connected').at(-1)!;
    expect(back.payload).toMatchObject({ agentRestarted: true, repushed: ['signal'], agentPid: agentPid(runDir) });
    // The re-pushed probe works, with the parameters it had (USR1 to an ignoring sleep).
    const tpid = target!.pid!;
    process.kill(tpid, 'SIGUSR1');
    const run = `${(back.payload as { bootId: string }).bootId}/${agentPid(runDir)}`;
    const db = openStoreForSql(storePath);
    try {
      await waitFor(
        'the signal from the new agent',
        () =>
          db
            .prepare(
              "SELECT 1 FROM events WHERE vm = ? AND agent_run = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
            )
            .get(VM, run, tpid) !== undefined,
        15_000,
        200,
      );
    } finally {
      db.close();
    }
  }, 60_000);

  it('a refused host key is told once with its code, shown in status, and the link comes back once it is fixed', async () => {
    // vesperd re-reads known_hosts at every connection: a wrong key for the target refuses it.
    const kh = sshd.knownHosts;
    const good = readFileSync(kh, 'utf8');
    const other = join(dir, 'other_ed25519');
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    writeFileSync(kh, `[127.0.0.1]:${sshd.port} ${readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
    try {
      kill(relays(prefix).flatMap(sessionOf), 'SIGKILL');
      const st = await waitFor(
        'status shows the refused host key',
        async () => {
          const s = await status();
          return s.linkErrorCode === 'VSP_SSH_HOSTKEY_CHANGED' ? s : undefined;
        },
        15_000,
        100,
      );
      expect(st.link).toBe('connecting');
      expect(String(st.linkError)).toContain('host key changed');
      await sleep(3000); // several retries (backoff 100 ms .. 1 s)
      const told = vesperd.log.split('\n').filter((l) => l.includes('VSP_SSH_HOSTKEY_CHANGED') && l.includes(`"vm":"${VM}"`));
      expect(told.length).toBe(1);
    } finally {
      writeFileSync(kh, good);
    }
    await waitFor('relinked with the right key', linked, 15_000, 100);
    expect((await status()).linkErrorCode).toBeNull();
    expect(existsSync(kh)).toBe(true);
  }, 60_000);
});
