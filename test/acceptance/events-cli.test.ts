// `vesper events` and the CLI's answers against a real vesperd process: which past events it
// prints (the newest N, a whole range, everything after an id), how a follower goes from its
// backlog to new events (none skipped, none twice, discarded ones too with --all), and the
// verbs' answers an operator meets in the first hour. The events are host events (Pacemaker
// alerts, as `vesper alert-pacemaker` sends them) and the VM is libvirt's test driver's
// domain `test` (running, with neither the vesper channel nor an SSH target): no guest needed.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../../host/cli/api-client.js';
import { VESPER, VesperdProcess, writeVesperdConfig, type EventLine, type Run } from '../helpers/vesperd-process.js';
import { waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (vesperd with its libvirt connection)' : '';
if (why) console.warn(`SKIP events-cli tests: ${why}`);

const STORED = 1200;

describe.skipIf(Boolean(why))('vesper events and the CLI against a real vesperd', () => {
  let dir: string;
  let d: VesperdProcess;
  let api: ApiClient;
  let n = 0;

  /** Host events through the API, as `vesper alert-pacemaker` sends them; resolved once stored. */
  const submit = async (count: number, event = 'node-joined', vm = ''): Promise<void> => {
    const all: Promise<unknown>[] = [];
    for (let i = 0; i < count; i++) {
      const payloadJson = JSON.stringify({ kind: 'node', node: `n${++n}` });
      all.push(api.request({ hostEvent: { plugin: 'pacemaker', vm, event, payloadJson } }));
      if (all.length >= 64) await Promise.all(all.splice(0));
    }
    await Promise.all(all);
  };
  const lines = (r: Run): EventLine[] =>
    r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as EventLine);
  const ids = (r: Run): number[] => lines(r).map((e) => e.id);
  const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);
  /** The CLI with these arguments only (no --socket added in front). */
  const bare = (args: string[]): Promise<Run> =>
    new Promise((resolve) =>
      execFile(process.execPath, [VESPER, ...args], { timeout: 30_000, cwd: '/' }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
      ),
    );

  beforeAll(async () => {
    dir = mkdtempSync('/tmp/vesper-events-cli-');
    const socket = join(dir, 'vesperd.sock');
    const configPath = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: join(dir, 'events.db'),
      domains: ['test'],
      more: { libvirt: { uri: 'test:///default' } },
    });
    d = new VesperdProcess(configPath, socket);
    await d.start();
    api = await ApiClient.connect(socket);
    await submit(STORED);
  }, 120_000);

  afterAll(async () => {
    api?.close();
    await d?.killAll();
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(d?.log);
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('without a range prints the newest 100 in time order, and says older ones exist', async () => {
    const r = await d.cli(['events', '-o', 'json']);
    expect(r.code).toBe(0);
    expect(ids(r)).toEqual(range(STORED - 99, STORED));
    expect(r.stderr).toMatch(/older events are not shown.*-n N.*--since/);
  });

  it('-n N (and --limit N) is the newest N, as journalctl -n', async () => {
    expect(ids(await d.cli(['events', '-n', '3', '-o', 'json']))).toEqual([STORED - 2, STORED - 1, STORED]);
    expect(ids(await d.cli(['events', '--limit', '3', '-o', 'json']))).toEqual([STORED - 2, STORED - 1, STORED]);
    const all = await d.cli(['events', '-n', String(STORED + 10), '-o', 'json']);
    expect(ids(all)).toEqual(range(1, STORED));
    expect(all.stderr).toBe(''); // nothing left out, nothing said
  });

  it('with --since prints every event of the range, paged, none cut', async () => {
    const r = await d.cli(['events', '--since', '1h', '-o', 'json']);
    expect(r.code).toBe(0);
    expect(ids(r)).toEqual(range(1, STORED));
    expect(r.stderr).toBe('');
    const until = await d.cli(['events', '--since', '1h', '--until', '1s', '-o', 'json']);
    expect(ids(until)).toEqual(range(1, STORED));
    const none = await d.cli(['events', '--until', '2h', '-o', 'json']);
    expect(none.stdout).toBe('');
  });

  it('--after-id resumes exactly after an id; with -n it says how to go on', async () => {
    expect(ids(await d.cli(['events', '--after-id', String(STORED - 5), '-o', 'json']))).toEqual(range(STORED - 4, STORED));
    const r = await d.cli(['events', '--after-id', '10', '-n', '5', '-o', 'json']);
    expect(ids(r)).toEqual(range(11, 15));
    expect(r.stderr).toContain('--after-id 15');
  });

  it('-f prints the newest 100, then every new event: none skipped, none twice', async () => {
    const f = d.follow();
    try {
      await waitFor('the backlog', () => f.lines.length >= 100, 20_000);
      const before = n;
      await submit(250);
      await waitFor('the new events', () => f.lines.length >= 350, 20_000);
      await new Promise((r) => setTimeout(r, 300));
      const got = f.lines.map((e) => e.id);
      expect(got.slice(0, 100)).toEqual(range(before - 99, before));
      expect(got).toEqual(range(before - 99, before + 250));
    } finally {
      f.stop();
    }
  });

  it('-f --all shows discarded events as they happen; the live and stored paths agree', async () => {
    await d.ok(['filter', 'set', '--vm', '', 'pacemaker', '*', 'attribute', 'discard']);
    const all = d.follow(['--all', '--limit', '1']);
    const kept = d.follow(['--limit', '1']);
    try {
      await waitFor('both backlogs', () => all.lines.length >= 1 && kept.lines.length >= 1, 20_000);
      await submit(3, 'attribute');
      await submit(1, 'node-lost');
      await waitFor('the followers see node-lost', () => all.lines.length >= 5 && kept.lines.length >= 2, 20_000);
      const live = all.lines.slice(1);
      expect(live.map((e) => [e.event, e.disposition])).toEqual([
        ['attribute', 'discard'],
        ['attribute', 'discard'],
        ['attribute', 'discard'],
        ['node-lost', 'notify'],
      ]);
      expect(kept.lines.slice(1).map((e) => e.event)).toEqual(['node-lost']);
      const stored = lines(await d.cli(['events', '--all', '-n', '4', '-o', 'json']));
      expect(stored.map((e) => e.id)).toEqual(live.map((e) => e.id));
      expect(stored.map((e) => e.disposition)).toEqual(live.map((e) => e.disposition));
    } finally {
      all.stop();
      kept.stop();
      await d.ok(['filter', 'clear', '--all']);
    }
  });

  it('plain columns off a terminal; host events show (host) in the VM column; empty answers keep their header', async () => {
    const t = await d.cli(['events', '-n', '2']);
    expect(t.stdout.split('\n')[0]).toMatch(/^HOST TIME\s+VM\s+PLUGIN/);
    expect(t.stdout.split('\n')[1]).toMatch(/^\S+\s+\(host\)\s+pacemaker\/0/);
    const list = await d.cli(['list']);
    expect(list.stdout).not.toMatch(/[┌│─└]/);
    expect(list.stdout.split('\n')[0]).toMatch(/^VM\s+STATE\s+LINK/);
    const probes = await d.cli(['probes']);
    expect(probes.stdout).not.toMatch(/[┌│─└]/);
    const empty = await d.cli(['events', '--vm', 'nosuchvm']);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toMatch(/^HOST TIME\s+VM/);
  });

  it('the global --socket anywhere on the line; `vesper help` exits 0; usage errors carry VSP_USAGE and exit 2', async () => {
    const after = await bare(['list', '-o', 'json', '--socket', d.socket]);
    expect(after.code).toBe(0);
    expect(JSON.parse(after.stdout)).toEqual(expect.any(Array));
    expect((await bare(['events', '-n', '1', '-o', 'json', `--socket=${d.socket}`])).code).toBe(0);
    expect((await bare(['help'])).code).toBe(0);
    const bad = await bare(['list', '--nosuchoption']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('VSP_USAGE');
  });

  it('detach of a probe not attached is idempotent: says so, exit 0', async () => {
    const r = await d.cli(['detach', 'test', 'oom']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('oom was not attached to test (nothing to do)');
    const unknown = await d.cli(['detach', 'test', 'nosuchprobe']);
    expect(unknown.stderr).toContain('VSP_PROBE_NOT_FOUND');
  });

  it('filter set refuses a plugin or an event nothing could match, naming the known ones', async () => {
    const r = await d.cli(['filter', 'set', 'nosuchplugin', '*', 'x', 'discard']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/VSP_FILTER_INVALID: no probe or host plugin is called "nosuchplugin".*known: .*channel.*signal/);
    const glob = await d.cli(['filter', 'set', 'sig*', '*', '*', 'discard']);
    expect(glob.code).toBe(2);
    expect(glob.stderr).toContain("'*' alone is the wildcard");
    const ev = await d.cli(['filter', 'set', 'signal', '*', 'nosuchevent', 'discard']);
    expect(ev.code).toBe(2);
    expect(ev.stderr).toMatch(/signal has no event "nosuchevent"; its events: signal/);
    expect((await d.cli(['filter', 'set', '*', '*', 'heartbeat-lost', 'notify'])).code).toBe(0);
    expect((await d.cli(['filter', 'set', 'process', '*', '*', 'notify'])).code).toBe(0);
    expect((await d.ok(['filter', 'list'])).split('\n').length).toBeGreaterThan(2);
    await d.ok(['filter', 'clear', '--all']);
    expect(await d.ok(['filter', 'list', '-o', 'json'])).toBe('[]\n');
  });

  it('attach on a VM without channel or SSH target says what is missing; bad signal names are refused', async () => {
    const bad = await d.cli(['attach', 'test', 'signal', '--param', 'signals=SEGV,NOPE']);
    expect(bad.code).toBe(65);
    expect(bad.stderr).toMatch(/VSP_PROBE_BAD_PARAM: signal signals: unknown signal NOPE \(known: .*SEGV/);
    const r = await d.cli(['attach', 'test', 'signal']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('neither the vesper channel nor an SSH target');
    expect(r.stdout).toContain('ssh.targets');
    expect(r.stdout).not.toContain('pushed when the agent connects');
    const set = await d.cli(['param', 'set', 'test', 'signal', 'signals=SEGV,NOPE']);
    expect(set.code).toBe(65);
    expect(set.stderr).toContain('unknown signal NOPE');
    expect((await d.cli(['param', 'set', 'test', 'signal', 'signals=SEGV,ABRT'])).code).toBe(0);
    await d.ok(['detach', 'test', 'signal']);
  });

  it('param get VM channel shows the values in effect (the config says reconnect_max 1s, keepalive 1s)', async () => {
    const p = await d.json<Record<string, string>>(['param', 'get', 'test', 'channel']);
    expect(p).toMatchObject({ reconnect_max: '1000', reconnect_min: '100', keepalive: '1000' });
  });

  it('a closed pipe ends `vesper analyze` quietly (text and JSON)', async () => {
    await submit(1, 'resource-failed', 'test');
    for (const format of ['text', 'json']) {
      const p = spawn(process.execPath, [VESPER, '--socket', d.socket, 'analyze', 'test', '-o', format], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      p.stdout.destroy(); // the reader is gone before the first write: `| head -0`
      let stderr = '';
      p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const code = await new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
      expect(stderr).not.toContain('EPIPE');
      expect(stderr).toBe('');
      expect(code).toBe(0);
    }
  });
});
