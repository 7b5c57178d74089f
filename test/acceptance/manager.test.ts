// vesperd against the real thing: libvirtd the test starts, a QEMU guest with the agent
// inside, real faults from the guest's test helper, the real `vesper` CLI in its own
// processes, the real SQLite store, and vesperd itself killed with SIGKILL mid-stream.
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LibvirtEvent } from '../../host/libvirt/events.js';
import { VmRig } from '../rigs/vm/rig.js';
import { readableCliCopy, whyCopyNotRunnableAs } from '../helpers/cli-copy.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { USR1_STORM_PROBE, VesperdProcess, writeVesperdConfig, type EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU, groups)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP manager tests: ${why}`);

/** The payload of a signal event, as far as these tests read it. */
type SignalPayload = { signal?: { sig: number; senderIsKernel: boolean; target: { pid: number } } };
const NOBODY = { uid: 65534, gid: 65534 };

describe.skipIf(Boolean(why))('vesperd with a real guest', () => {
  let rig: VmRig;
  let dir: string;
  let storePath: string;
  let d: VesperdProcess; // every vesperd this file starts, stopped at the end whatever happened
  const group = `vesper-t${process.pid % 100000}`;
  const libvirt: Array<LibvirtEvent & { seenAt: number }> = [];
  const trail: string[] = []; // what happened, printed when VESPER_TEST_VERBOSE is set
  const standby = (): string => `${rig.name}-standby`;

  const linkUp = (): Promise<boolean> => d.linked(rig.name);
  const store = (): Database.Database => openStoreForSql(storePath);
  /** `vesper events -f -o json` for the VM's signal events, as a process of its own. */
  const followSignals = () => d.follow<SignalPayload>(['--vm', rig.name, '--plugin', 'signal']);

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
    const socket = join(dir, 'run', 'vesperd.sock');
    storePath = join(dir, 'events.db');
    await new Promise<void>((resolve, reject) =>
      execFile('groupadd', ['-f', group], (err: Error | null) => (err ? reject(err) : resolve())),
    );
    const configPath = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: storePath,
      group,
      domains: [`${rig.name}*`], // the guest and its failover standby
      // require_lock_manager false: the standby is this same libvirtd (no lock manager, no shared
      // disk); the failover test below checks the fence ordering, failover-lockd.test.ts the guard
      more: { actions: { exec_timeout: '10s', rate_limit: { max: 5, per: '10m' }, require_lock_manager: false } },
    });
    d = new VesperdProcess(configPath, socket);
    await d.start();
    await waitFor('vesperd links to the guest agent', linkUp, 60_000, 500);
  }, 600_000);

  afterAll(async () => {
    await d?.killAll();
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${[...trail, ...(d?.trail ?? [])].sort().join('\n')}\n${d?.log ?? ''}`);
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
    const a = await d.cli(['attach', rig.name, 'signal', 'process', '--param', 'comms=vesper-demo-svc']);
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
    const st = await d.json<{ attached: Array<{ name: string; loaded: boolean; params: Record<string, string> }> }>(['status', rig.name]);
    expect(st.attached.map((p) => [p.name, p.loaded])).toEqual(
      expect.arrayContaining([
        ['signal', true],
        ['process', true],
      ]),
    );
  });

  it('filter set … discard makes the same fault silent, and the store still has it, marked', async () => {
    const set = await d.cli(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'discard']);
    expect(set.code, set.stderr).toBe(0);
    // From after the newest stored event: no backlog to race with (a follower slow to start
    // under load printed the earlier SIGSEGV after `before` was taken), nothing missed either.
    const db0 = store();
    const newest = (db0.prepare('SELECT max(id) AS m FROM events').get() as { m: number | null }).m ?? 0;
    db0.close();
    const { lines, stop } = d.follow<SignalPayload>(['--vm', rig.name, '--plugin', 'signal', '--after-id', String(newest)]);
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
                return row.disposition === 'discard' && (JSON.parse(row.payload) as SignalPayload).signal?.target.pid === pid;
              }),
          30_000,
        );
      } finally {
        db.close();
      }
      await sleep(1000);
      expect(lines.slice(before)).toEqual([]);
      const all = await d.cli(['events', '--vm', rig.name, '--plugin', 'signal', '--all', '-o', 'json']);
      const stored = all.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as EventLine<SignalPayload>);
      expect(stored.some((e) => e.disposition === 'discard' && e.payload.signal?.target.pid === pid)).toBe(true);
    } finally {
      stop();
      await d.cli(['filter', 'clear', '--vm', rig.name, 'signal', '*', 'signal']);
    }
    const rules = await d.json<unknown[]>(['filter', 'list']);
    expect(rules).toEqual([]);
  });

  it('an exec action runs with the event in its environment and on stdin', async () => {
    const script = join(dir, 'actions', 'record.sh');
    const out = join(dir, 'actions', 'seen');
    writeFileSync(script, `#!/bin/sh\nenv | grep '^VESPER_' | sort > ${out}.env\ncat > ${out}.stdin\n`, { mode: 0o755 });
    const set = await d.cli(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'action', 'exec', script]);
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
      await d.cli(['filter', 'clear', '--all']);
    }
  });

  it('a restart action destroys and starts the domain; the agent comes back with its probes', async () => {
    const f = await d.cli(['filter', 'set', '--vm', rig.name, 'signal', '*', 'signal', 'action', 'restart']);
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
      await d.cli(['filter', 'clear', '--all']);
    }
    await waitFor('the agent back after the restart', linkUp, 120_000, 500);
    await waitFor(
      'probes pushed again',
      async () => (await d.json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
  });

  it('a guest reboot and a vesperd restart both end with the same probes and parameters', async () => {
    const set = await d.cli(['param', 'set', rig.name, 'signal', 'signals=SEGV,TERM,USR2']);
    expect(set.code, set.stderr).toBe(0);
    const want = await d.json<{ attached: unknown; bootId: string }>(['status', rig.name]);
    await rig.fault('reboot').catch(() => undefined);
    // The host's end of a virtio-serial port stays open across a guest reboot: the agent of the
    // new boot says hello on the same link.
    await waitFor(
      'the agent of the new boot',
      async () => {
        const b = (await d.json<{ bootId: string | null }>(['status', rig.name]).catch(() => null))?.bootId;
        trail.push(`${new Date().toISOString()} status bootId ${b} (before the reboot: ${want.bootId})`);
        return Boolean(b) && b !== want.bootId;
      },
      180_000,
      500,
    );
    await waitFor('the agent back after the reboot', linkUp, 120_000, 500);
    await waitFor(
      'probes loaded after the reboot',
      async () => (await d.json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
    expect((await d.json<{ attached: unknown }>(['status', rig.name])).attached).toEqual(want.attached);
    const beforeRestart = (await d.json<{ agentPid: number }>(['status', rig.name])).agentPid;
    await d.stop();
    await d.start();
    await waitFor('the agent after the vesperd restart', linkUp, 60_000, 500);
    // Same agent (the probes stayed loaded in it), found again by a new vesperd.
    expect((await d.json<{ agentPid: number }>(['status', rig.name])).agentPid).toBe(beforeRestart);
    await waitFor(
      'probes loaded after the vesperd restart',
      async () => (await d.json<{ attached: Array<{ loaded: boolean }> }>(['status', rig.name])).attached.every((p) => p.loaded),
      60_000,
      500,
    );
    expect((await d.json<{ attached: unknown }>(['status', rig.name])).attached).toEqual(want.attached);
    expect(await d.json<Record<string, string>>(['param', 'get', rig.name, 'signal'])).toMatchObject({ signals: 'SEGV,TERM,USR2' });
  }, 400_000);

  it('SIGKILL of vesperd while the guest streams 100,000 records loses none and stores none twice', async () => {
    await d.cli(['detach', rig.name, 'signal']);
    const a = await d.cli(['attach', rig.name, ...USR1_STORM_PROBE]);
    expect(a.code, a.stderr).toBe(0);
    const N = 100_000;
    // Pids repeat across the guest's boots (earlier tests restart it), so only rows stored from
    // now on are the storm's.
    const before = store();
    const fromId = (before.prepare('SELECT coalesce(max(id), 0) FROM events').pluck().get() as number) + 1;
    before.close();
    // 3,000/s for 33 s, the kill 4 s in. What this tests is the channel across a vesperd that
    // dies, not how fast the agent reads the kernel (the benchmarks' agent.records_per_s and
    // vm.records_per_s): at 5,000/s a 1-vCPU TCG guest whose agent also resends the backlog
    // after the restart sometimes let the kernel's trace buffer overflow (told as loss records
    // from the kernel ring, which this test lists when the count falls short).
    const storm = rig.fault(`sigstorm ${N} 3000`, 180_000);
    await sleep(4000);
    await d.stop('SIGKILL');
    await sleep(1500);
    await d.start();
    const target = numbersIn(await storm).at(-1); // the answer is: ok sigstorm MS PID
    const db = store();
    try {
      const count = (): number =>
        (
          db
            .prepare(
              "SELECT count(*) AS n FROM events WHERE id >= ? AND vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
            )
            .get(fromId, rig.name, target) as { n: number }
        ).n;
      await waitFor('all 100,000 stored', () => count() >= N, 120_000, 500).catch((err: Error) => {
        const lost = db
          .prepare(
            "SELECT agent_run AS run, seq, payload_json(payload) AS p FROM events WHERE id >= ? AND vm = ? AND event = 'records-lost'",
          )
          .all(fromId, rig.name);
        const runs = db
          .prepare(
            'SELECT agent_run AS run, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM events WHERE id >= ? AND vm = ? AND agent_run IS NOT NULL GROUP BY agent_run',
          )
          .all(fromId, rig.name);
        throw new Error(`${err.message}: ${count()} stored; loss reports ${JSON.stringify(lost)}; rows by run ${JSON.stringify(runs)}`);
      });
      // A record stored twice shows as one kernel event (its monotonic time) under two rows:
      // which seqs and runs they have tells the agent's doing from the store's.
      const twice = db
        .prepare(
          `SELECT json_extract(payload_json(payload), '$.monoNs') AS mono, count(*) AS n, group_concat(seq) AS seqs, group_concat(DISTINCT agent_run) AS runs
           FROM events WHERE id >= ? AND vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?
           GROUP BY mono HAVING n > 1 LIMIT 5`,
        )
        .all(fromId, rig.name, target);
      const byRun = db
        .prepare(
          `SELECT agent_run AS run, count(*) AS n, min(seq) AS lo, max(seq) AS hi, min(id) AS firstId, max(id) AS lastId,
             count(DISTINCT json_extract(payload_json(payload), '$.monoNs')) AS monos,
             group_concat(DISTINCT json_extract(payload_json(payload), '$.signal.sender.pid')) AS senders
           FROM events WHERE id >= ? AND vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ? GROUP BY agent_run`,
        )
        .all(fromId, rig.name, target);
      if (count() !== N) console.error('SIGKILL test rows by run:', JSON.stringify(byRun));
      expect(count(), `events stored twice: ${JSON.stringify(twice)}`).toBe(N);
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
    const f = await d.cli([
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
    const a = await d.cli(['attach', rig.name, 'signal', '--param', 'signals=SEGV']); // replaces the storm's parameters
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
      await d.cli(['filter', 'clear', '--all']);
    }
  }, 200_000);

  it('refuses a user outside the group, lets a member in', async (ctx) => {
    // nobody runs a copy of the CLI that any user can read: the checkout may not be (a clone
    // in a `mktemp -d` directory is 0700), and nobody could not even load the CLI from there.
    const copy = readableCliCopy();
    try {
      const cannot = whyCopyNotRunnableAs(copy, NOBODY);
      if (cannot) {
        console.warn(`SKIP the group test: ${cannot}`);
        ctx.skip();
      }
      const gid = Number(
        readFileSync('/etc/group', 'utf8')
          .split('\n')
          .find((l) => l.startsWith(`${group}:`))!
          .split(':')[2],
      );
      const refused = await d.cli(['attach', rig.name, 'oom'], 60_000, { ...NOBODY, vesper: copy.vesper });
      expect(refused.code, refused.stderr).toBe(77);
      expect(refused.stderr).toContain('VSP_PERMISSION_DENIED');
      const member = await d.cli(['list', '-o', 'json'], 60_000, { ...NOBODY, groups: [gid], vesper: copy.vesper });
      expect(member.code, member.stderr).toBe(0);
    } finally {
      copy.remove();
    }
  });

  it('a config with mistakes is refused, one line per mistake', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(
      bad,
      ['daemon:', '  log_level: loud', 'store:', '  sync: sometimes', '  retention:', '    max_age: forever', 'chanel: {}', ''].join('\n'),
    );
    const r = await d.cli(['daemon', '--config', bad]);
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
