// vesperd against the real thing: libvirtd the test starts, a QEMU guest with the agent
// inside, real faults from the guest's test helper, the real `vesper` CLI in its own
// processes, the real SQLite store, and vesperd itself killed with SIGKILL mid-stream.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LibvirtEvent } from '../../host/libvirt/events.js';
import { projectRoot } from '../../host/probes/package.js';
import { VmRig } from '../../host/vm/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { USR1_STORM_PROBE } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU, groups)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP manager tests: ${why}`);

const ROOT = projectRoot();
const VESPER = join(ROOT, 'dist/host/vesper.mjs');

/** An event as `vesper events -o json` prints it (the fields these tests read). */
interface EventLine {
  vm: string;
  plugin: string;
  seq: number | null;
  disposition: string;
  payload: { signal?: { sig: number; senderIsKernel: boolean; target: { pid: number } } };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe.skipIf(Boolean(why))('vesperd with a real guest', () => {
  let rig: VmRig;
  let dir: string;
  let socket: string;
  let storePath: string;
  let configPath: string;
  let daemon: ChildProcess | null = null;
  const spawned: ChildProcess[] = []; // every vesperd this file started, stopped at the end whatever happened
  let daemonLog = '';
  const group = `vesper-t${process.pid % 100000}`;
  const libvirt: Array<LibvirtEvent & { seenAt: number }> = [];
  const trail: string[] = []; // what happened, printed when VESPER_TEST_VERBOSE is set
  const standby = (): string => `${rig.name}-standby`;

  /** The CLI, as a separate process, with a time limit. */
  const vesper = (args: string[], o: { asNobody?: boolean; groups?: number[]; timeoutMs?: number } = {}): Promise<Run> =>
    new Promise((resolve) => {
      const argv = [VESPER, '--socket', socket, ...args];
      const [cmd, full] = o.asNobody
        ? [
            'setpriv',
            [
              '--reuid=65534',
              '--regid=65534',
              o.groups?.length ? `--groups=${o.groups.join(',')}` : '--clear-groups',
              process.execPath,
              ...argv,
            ],
          ]
        : [process.execPath, argv];
      execFile(cmd, full, { timeout: o.timeoutMs ?? 60_000, cwd: '/' }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      });
    });
  const json = async <T>(args: string[]): Promise<T> => {
    const r = await vesper([...args, '-o', 'json']);
    if (r.code !== 0) throw new Error(`vesper ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };

  const startDaemon = async (): Promise<void> => {
    const p = spawn(process.execPath, [VESPER, 'daemon', '--config', configPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, VESPER_KEY_DIR: join(ROOT, '.cache', 'keys') },
    });
    p.stderr!.on('data', (c: Buffer) => (daemonLog = (daemonLog + c.toString()).slice(-40_000)));
    p.on('exit', (code, sig) => trail.push(`${new Date().toISOString()} vesperd ${p.pid} exited: ${code ?? sig}`));
    daemon = p;
    spawned.push(p);
    trail.push(`${new Date().toISOString()} vesperd ${p.pid} started`);
    await waitFor('vesperd answers', async () => existsSync(socket) && (await vesper(['list'])).code === 0, 60_000, 200);
  };
  const stopDaemon = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    const p = daemon;
    daemon = null;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    trail.push(`${new Date().toISOString()} vesperd ${p.pid}: ${signal}`);
    p.kill(signal);
    await Promise.race([gone, sleep(15_000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  };
  const linkUp = (): Promise<boolean> =>
    json<{ link: string }>(['status', rig.name]).then(
      (s) => s.link === 'connected',
      () => false,
    );
  const store = (): Database.Database => openStoreForSql(storePath);
  /** `vesper events -f -o json` for the VM's signal events, as a process of its own. */
  const followSignals = (): { lines: EventLine[]; stop: () => void } => {
    const p = spawn(process.execPath, [VESPER, '--socket', socket, 'events', '-f', '-o', 'json', '--vm', rig.name, '--plugin', 'signal'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const lines: EventLine[] = [];
    createInterface({ input: p.stdout! }).on('line', (l) => lines.push(JSON.parse(l) as EventLine));
    return { lines, stop: () => p.kill() };
  };

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, d) => console.warn(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    await rig.prepare();
    rig.events.on('event', (e: LibvirtEvent) => {
      libvirt.push({ ...e, seenAt: Date.now() });
      trail.push(`${new Date().toISOString()} libvirt ${e.domain} ${e.name} ${e.event ?? ''} ${e.reason ?? ''}`);
    });
    (await rig.boot()).close(); // vesperd keeps the link from now on
    dir = mkdtempSync('/tmp/vesperd-');
    chmodSync(dir, 0o755); // the socket's own mode is what keeps others out
    mkdirSync(join(dir, 'actions'));
    socket = join(dir, 'run', 'vesperd.sock');
    storePath = join(dir, 'events.db');
    configPath = join(dir, 'vesper.yaml');
    await new Promise<void>((resolve, reject) => execFile('groupadd', ['-f', group], (err) => (err ? reject(err) : resolve())));
    writeFileSync(
      configPath,
      [
        'daemon:',
        `  socket: ${socket}`,
        `  group: ${group}`,
        '  log_level: info',
        // only this test's guest: other VMs on this libvirtd are not ours to link to
        'libvirt:',
        `  domains: ['${rig.name}*']`,
        'store:',
        `  path: ${storePath}`,
        'channel:',
        '  keepalive: 1s',
        '  reconnect_min: 100ms',
        '  reconnect_max: 1s',
        'actions:',
        '  exec_timeout: 10s',
        '  rate_limit: { max: 5, per: 10m }',
        `  fence_lock_dir: ${join(dir, 'fence')}`,
        '',
      ].join('\n'),
    );
    await startDaemon();
    await waitFor('vesperd links to the guest agent', linkUp, 60_000, 500);
  }, 600_000);

  afterAll(async () => {
    await stopDaemon();
    for (const p of spawned) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${trail.join('\n')}\n${daemonLog}`);
    if (rig) {
      for (const name of [standby()]) {
        await rig.hv?.destroy(name).catch(() => undefined);
        await rig.hv?.undefine(name).catch(() => undefined);
      }
      await rig.stop();
    }
    await new Promise<void>((r) => execFile('groupdel', [group], () => r()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('attach on a running VM, a real fault, and `events -f -o json` shows it', async () => {
    const a = await vesper(['attach', rig.name, 'signal', 'process', '--param', 'comms=vesper-demo-svc']);
    expect(a.code, a.stderr).toBe(0);
    const { lines, stop } = followSignals();
    try {
      await sleep(1000);
      const before = lines.length;
      const [pid] = numbersIn(await rig.fault('segv'));
      const ev = await waitFor(
        'the SIGSEGV in events -f',
        () => lines.slice(before).find((e) => e.payload.signal?.sig === 11 && e.payload.signal.target.pid === pid),
        30_000,
      );
      expect(ev.vm).toBe(rig.name);
      expect(ev.plugin).toBe('signal');
      expect(ev.payload.signal?.senderIsKernel).toBe(true);
      expect(ev.disposition).toBe('notify');
      expect(ev.seq).toBeGreaterThan(0);
    } finally {
      stop();
    }
    const st = await json<{ attached: Array<{ name: string; loaded: boolean; params: Record<string, string> }> }>(['status', rig.name]);
    expect(st.attached.map((p) => [p.name, p.loaded])).toEqual(
      expect.arrayContaining([
        ['signal', true],
        ['process', true],
      ]),
    );
  });

  it('filter set … discard makes the same fault silent, and the store still has it, marked', async () => {
    const set = await vesper(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'discard']);
    expect(set.code, set.stderr).toBe(0);
    const { lines, stop } = followSignals();
    try {
      await sleep(1500);
      const before = lines.length;
      const [pid] = numbersIn(await rig.fault('segv'));
      // The record reaches the store (discarded) within a few seconds; the follower sees nothing.
      const db = store();
      try {
        await waitFor(
          'the discarded event in the store',
          () =>
            db
              .prepare(
                "SELECT disposition, payload_json(payload) AS payload FROM events WHERE vm = ? AND plugin = 'signal' ORDER BY id DESC LIMIT 5",
              )
              .all(rig.name)
              .some((r) => {
                const row = r as { disposition: string; payload: string };
                return row.disposition === 'discard' && (JSON.parse(row.payload) as EventLine['payload']).signal?.target.pid === pid;
              }),
          30_000,
        );
      } finally {
        db.close();
      }
      await sleep(1000);
      expect(lines.slice(before)).toEqual([]);
      const all = await vesper(['events', '--vm', rig.name, '--plugin', 'signal', '--all', '-o', 'json']);
      const stored = all.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as EventLine);
      expect(stored.some((e) => e.disposition === 'discard' && e.payload.signal?.target.pid === pid)).toBe(true);
    } finally {
      stop();
      await vesper(['filter', 'clear', '--vm', rig.name, 'signal', '*', 'signal']);
    }
    const rules = await json<unknown[]>(['filter', 'list']);
    expect(rules).toEqual([]);
  });

  it('an exec action runs with the event in its environment and on stdin', async () => {
    const script = join(dir, 'actions', 'record.sh');
    const out = join(dir, 'actions', 'seen');
    writeFileSync(script, `#!/bin/sh\nenv | grep '^VESPER_' | sort > ${out}.env\ncat > ${out}.stdin\n`, { mode: 0o755 });
    const set = await vesper(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'action', 'exec', script]);
    expect(set.code, set.stderr).toBe(0);
    try {
      const [pid] = numbersIn(await rig.fault('segv'));
      await waitFor('the action ran', () => existsSync(`${out}.stdin`) && readFileSync(`${out}.stdin`, 'utf8').includes('\n'), 30_000);
      const env = readFileSync(`${out}.env`, 'utf8');
      expect(env).toContain(`VESPER_VM=${rig.name}`);
      expect(env).toContain('VESPER_PLUGIN=signal');
      expect(env).toContain('VESPER_F_SIGNAL_SIG=11');
      expect(env).toContain(`VESPER_F_SIGNAL_TARGET_PID=${pid}`);
      const stdin = JSON.parse(readFileSync(`${out}.stdin`, 'utf8')) as { payload: { signal: { sig: number } } };
      expect(stdin.payload.signal.sig).toBe(11);
    } finally {
      await vesper(['filter', 'clear', '--all']);
    }
  });

  it('a restart action destroys and starts the domain; the agent comes back with its probes', async () => {
    const f = await vesper(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'action', 'restart']);
    expect(f.code, f.stderr).toBe(0);
    const from = libvirt.length;
    try {
      // The restart may take the guest down before the helper's answer gets out.
      await rig.fault('segv').catch(() => undefined);
      await waitFor(
        'Stopped then Started from libvirt',
        () => libvirt.slice(from).some((e) => e.domain === rig.name && e.event === 'Started'),
        60_000,
      );
      const mine = libvirt.slice(from).filter((e) => e.domain === rig.name && e.kind === 'lifecycle');
      expect(mine.findIndex((e) => e.event === 'Stopped')).toBeLessThan(mine.findIndex((e) => e.event === 'Started'));
    } finally {
      await vesper(['filter', 'clear', '--all']);
    }
    await waitFor('the agent back after the restart', linkUp, 120_000, 500);
    await waitFor(
      'probes pushed again',
      async () => (await json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
  });

  it('a guest reboot and a vesperd restart both end with the same probes and parameters', async () => {
    const set = await vesper(['param', 'set', rig.name, 'signal', 'signals=SEGV,TERM,USR2']);
    expect(set.code, set.stderr).toBe(0);
    const want = await json<{ attached: unknown; bootId: string }>(['status', rig.name]);
    await rig.fault('reboot').catch(() => undefined);
    // The host's end of a virtio-serial port stays open across a guest reboot: the agent of the
    // new boot says hello on the same link.
    await waitFor(
      'the agent of the new boot',
      async () => {
        const b = (await json<{ bootId: string | null }>(['status', rig.name]).catch(() => null))?.bootId;
        trail.push(`${new Date().toISOString()} status bootId ${b} (before the reboot: ${want.bootId})`);
        return Boolean(b) && b !== want.bootId;
      },
      180_000,
      500,
    );
    await waitFor('the agent back after the reboot', linkUp, 120_000, 500);
    await waitFor(
      'probes loaded after the reboot',
      async () => (await json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
    expect((await json<{ attached: unknown }>(['status', rig.name])).attached).toEqual(want.attached);
    const beforeRestart = (await json<{ agentPid: number }>(['status', rig.name])).agentPid;
    await stopDaemon();
    await startDaemon();
    await waitFor('the agent after the vesperd restart', linkUp, 60_000, 500);
    // Same agent (the probes stayed loaded in it), found again by a new vesperd.
    expect((await json<{ agentPid: number }>(['status', rig.name])).agentPid).toBe(beforeRestart);
    await waitFor(
      'probes loaded after the vesperd restart',
      async () => (await json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
    expect((await json<{ attached: unknown }>(['status', rig.name])).attached).toEqual(want.attached);
    expect(await json<Record<string, string>>(['param', 'get', rig.name, 'signal'])).toMatchObject({ signals: 'SEGV,TERM,USR2' });
  }, 400_000);

  it('SIGKILL of vesperd while the guest streams 100,000 records loses none and stores none twice', async () => {
    await vesper(['detach', rig.name, 'signal']);
    const a = await vesper(['attach', rig.name, ...USR1_STORM_PROBE]);
    expect(a.code, a.stderr).toBe(0);
    const N = 100_000;
    // 5,000/s for 20 s: well inside what a 1-vCPU TCG guest sustains; the kill comes 4 s in.
    const storm = rig.fault(`sigstorm ${N} 5000`, 180_000);
    await sleep(4000);
    await stopDaemon('SIGKILL');
    await sleep(1500);
    await startDaemon();
    const target = numbersIn(await storm).at(-1); // the answer is: ok sigstorm MS PID
    const db = store();
    try {
      const count = (): number =>
        (
          db
            .prepare(
              "SELECT count(*) AS n FROM events WHERE vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
            )
            .get(rig.name, target) as { n: number }
        ).n;
      await waitFor('all 100,000 stored', () => count() >= N, 120_000, 500).catch((err: Error) => {
        throw new Error(`${err.message}: ${count()} stored`);
      });
      expect(count()).toBe(N);
      const runs = db
        .prepare(
          'SELECT agent_run AS run, count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM events WHERE vm = ? AND agent_run IS NOT NULL GROUP BY agent_run',
        )
        .all(rig.name) as Array<{ run: string; n: number; d: number; lo: number; hi: number }>;
      for (const r of runs) {
        expect(r.n, `run ${r.run}`).toBe(r.d); // no sequence number twice
        expect(r.hi - r.lo + 1, `run ${r.run}`).toBe(r.d); // and none missing in between
      }
    } finally {
      db.close();
    }
  }, 400_000);

  it('failover fences the old domain, confirmed by libvirt, before it starts the standby', async () => {
    const f = await vesper([
      'filter',
      'set',
      '--vm',
      rig.name,
      'signal',
      '*',
      'signal',
      'action',
      'failover',
      '--standby-uri',
      'qemu:///system',
      '--standby-name',
      standby(),
    ]);
    expect(f.code, f.stderr).toBe(0);
    const from = libvirt.length;
    const a = await vesper(['attach', rig.name, 'signal', '--param', 'signals=SEGV']); // replaces the storm's parameters
    expect(a.code, a.stderr).toBe(0);
    try {
      await rig.fault('segv').catch(() => undefined); // the fence may come before the answer
      await waitFor('the standby started', () => libvirt.slice(from).some((e) => e.domain === standby() && e.event === 'Started'), 90_000);
      const seq = libvirt.slice(from).filter((e) => e.kind === 'lifecycle' && (e.domain === rig.name || e.domain === standby()));
      const stopped = seq.findIndex((e) => e.domain === rig.name && e.event === 'Stopped');
      const started = seq.findIndex((e) => e.domain === standby() && e.event === 'Started');
      expect(stopped).toBeGreaterThanOrEqual(0);
      expect(stopped).toBeLessThan(started);
      expect((await rig.hv.state(rig.name)).state).toBe('shut off');
    } finally {
      await vesper(['filter', 'clear', '--all']);
    }
  }, 200_000);

  it('refuses a user outside the group, lets a member in', async () => {
    const gid = Number(
      readFileSync('/etc/group', 'utf8')
        .split('\n')
        .find((l) => l.startsWith(`${group}:`))!
        .split(':')[2],
    );
    const refused = await vesper(['attach', rig.name, 'oom'], { asNobody: true });
    expect(refused.code).toBe(77);
    expect(refused.stderr).toContain('VSP_PERMISSION_DENIED');
    const member = await vesper(['list', '-o', 'json'], { asNobody: true, groups: [gid] });
    expect(member.code, member.stderr).toBe(0);
  });

  it('a config with mistakes is refused, one line per mistake', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(
      bad,
      ['daemon:', '  log_level: loud', 'store:', '  sync: sometimes', '  retention:', '    max_age: forever', 'chanel: {}', ''].join('\n'),
    );
    const r = await vesper(['daemon', '--config', bad]);
    expect(r.code).toBe(78);
    const lines = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.includes('bad.yaml:'));
    expect(lines).toHaveLength(4);
    expect(r.stderr).toMatch(/bad\.yaml:2:\d+: daemon\.log_level/);
    expect(r.stderr).toMatch(/bad\.yaml:4:\d+: store\.sync/);
    expect(r.stderr).toMatch(/bad\.yaml:6:\d+: store\.retention\.max_age/);
    expect(r.stderr).toMatch(/bad\.yaml:7:\d+: chanel.*channel/);
  });
});
