// No false alarm when the host itself stops the guest's clock (issue 19). A real guest under a
// real libvirtd, vesperd and the CLI as users run them, the heartbeat probe attached, and exec
// actions set on channel heartbeat-lost and agent-lost that write a file. Then the host stops
// the guest in each way libvirt can: `virsh suspend` for 30 s then `resume`, `virsh save` then
// `restore`, an external snapshot with memory (the rig's guest has no disk, so no internal
// snapshot: those need qcow2 disks), with and without --live. For each: no heartbeat-lost or
// agent-lost is told, no action runs, the channel says why detection was held and that it
// resumed, heartbeats come back, and `vesper analyze` calls it a host pause, never a hang or
// an agent fault. The control: the agent SIGSTOPped inside the guest (a real hang of it) still
// raises heartbeat-lost and runs the action, so the test can fail.
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Analysis } from '../../host/analysis/types.js';
import { VmRig } from '../rigs/vm/rig.js';
import { VesperdProcess, writeVesperdConfig, type EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const run = promisify(execFile);
const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP host pause acceptance tests: ${why}`);

/**
 * Live migration between two libvirtd on this machine was not made to work in this branch: it
 * needs a second libvirtd in its own mount and UTS namespaces (its own /run/libvirt,
 * /var/lib/libvirt, virtlogd, host_uuid and hostname, since libvirt refuses a migration to a
 * host with the same UUID or name) and a destination XML with its own channel socket path.
 * What vesperd does on a migration's libvirt events (Suspended Migrated, Stopped Migrated) is
 * covered by the unit tests of host/daemon/host-pause.ts.
 */
const NO_MIGRATION =
  'live migration between two libvirtd on this machine not attempted yet: it needs a second libvirtd in its own mount and UTS namespaces ' +
  '(own /run/libvirt, /var/lib/libvirt, virtlogd, host_uuid and hostname) and a destination channel socket path; see the comment above';

describe.skipIf(Boolean(why))('no false alarm when the host stops the guest', () => {
  let rig: VmRig;
  let dir: string;
  let d: VesperdProcess;
  let fired: string;
  const trail: string[] = [];

  const virsh = async (...args: string[]): Promise<string> => (await run('virsh', args, { timeout: 120_000 })).stdout;

  const events = async (): Promise<EventLine[]> => {
    const r = await d.cli(['events', '--vm', rig.name, '--limit', '100000', '-o', 'json']);
    if (r.code !== 0) throw new Error(r.stderr);
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as EventLine);
  };
  const lastId = async (): Promise<number> => Math.max(0, ...(await events()).map((e) => e.id));
  const linkUp = (): Promise<boolean> => d.probesLoaded(rig.name);
  const firedLines = (): string[] => (existsSync(fired) ? readFileSync(fired, 'utf8').trim().split('\n').filter(Boolean) : []);

  /**
   * One way of stopping the guest: after `act`, watch-held (with `why`) then watch-resumed are
   * told, heartbeats come back (a beat after the resume, then 3 heartbeat limits more), and
   * nothing alarming happened since `act` began.
   */
  const noFalseAlarm = async (what: string, wantWhy: string, act: () => Promise<void>, heldWhy: unknown = wantWhy): Promise<void> => {
    await waitFor(`link before ${what}`, linkUp, 60_000, 500);
    const mark = await lastId();
    const firedBefore = firedLines().length;
    await act();
    const resumed = await waitFor(
      `watch-resumed after ${what}`,
      async () => (await events()).find((e) => e.id > mark && e.plugin === 'channel' && e.event === 'watch-resumed'),
      120_000,
      500,
    );
    await waitFor(
      `heartbeats after ${what}`,
      async () => (await events()).filter((e) => e.id > resumed.id && e.plugin === 'heartbeat' && e.event === 'beat').length >= 2,
      60_000,
      500,
    );
    await sleep(4000); // a lost heartbeat would have been told by now (3 intervals of 1 s)
    const since = (await events()).filter((e) => e.id > mark);
    trail.push(
      `${what}: ${since
        .filter((e) => e.plugin !== 'heartbeat')
        .map((e) => `${e.plugin}/${e.event} ${JSON.stringify(e.payload)}`)
        .join(' | ')}`,
    );
    const alarms = since.filter((e) => e.plugin === 'channel' && (e.event === 'heartbeat-lost' || e.event === 'agent-lost'));
    expect(alarms, `${what}: liveness alarms`).toEqual([]);
    expect(
      since.filter((e) => e.plugin === 'action'),
      `${what}: actions`,
    ).toEqual([]);
    expect(firedLines().length, `${what}: the exec action ran`).toBe(firedBefore);
    const held = since.find((e) => e.plugin === 'channel' && e.event === 'watch-held');
    // A live snapshot pauses the guest for its last moment only: the state may be running again
    // before it is read, and the job's end names it (in watch-resumed).
    expect(held?.payload, `${what}: watch-held`).toMatchObject({ why: heldWhy });
    expect(resumed.payload, `${what}: watch-resumed`).toMatchObject({ why: wantWhy });
    expect(since.some((e) => e.plugin === 'libvirt' && e.event === 'suspended')).toBe(true);

    // analyze at the pause: a host pause, never a hang or an agent fault.
    const a = await d.json<Analysis>(['analyze', rig.name, '--at', new Date(held!.hostTimeUs / 1000).toISOString()]);
    trail.push(`${what} analyze: ${JSON.stringify(a.verdicts.map((v) => [v.kind, v.scope, v.confidence, v.summary]))}`);
    const pause = a.verdicts.find((v) => v.kind === 'host-paused' && v.evidence.includes(held!.id));
    expect(pause, `${what}: a host-paused verdict`).toBeDefined();
    expect(pause).toMatchObject({ scope: 'host', confidence: 'confident', details: { why: wantWhy } });
    expect(a.verdicts.filter((v) => v.kind === 'guest-hang' || v.kind === 'agent-fault')).toEqual([]);
    const text = await d.ok(['analyze', rig.name, '--at', new Date(held!.hostTimeUs / 1000).toISOString()]);
    expect(text).toContain('host-paused (host, confident)');
    expect(text).not.toMatch(/guest-hang|agent-fault/);
  };

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, x) => console.warn(`vm rig: ${s}${x ? `: ${x}` : ''}`) });
    await rig.prepare();
    (await rig.boot()).close(); // vesperd keeps the link from now on
    dir = mkdtempSync('/tmp/vesper-pause-');
    chmodSync(dir, 0o755);
    fired = join(dir, 'fired');
    const script = join(dir, 'alarm.sh');
    writeFileSync(script, `#!/bin/sh\necho "$VESPER_PLUGIN/$VESPER_EVENT" >> ${fired}\n`, { mode: 0o755 });
    const socket = join(dir, 'run', 'vesperd.sock');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: join(dir, 'events.db'),
      domains: [rig.name],
      more: { channel: { resume_grace: '10s' } },
    });
    d = new VesperdProcess(config, socket);
    await d.start();
    await d.waitLinked(rig.name, 60_000, 500);
    await d.ok(['attach', rig.name, 'heartbeat', '--param', 'interval_ms=1000']);
    for (const ev of ['heartbeat-lost', 'agent-lost'])
      await d.ok(['filter', 'set', '--vm', rig.name, 'channel', '*', ev, 'action', 'exec', script]);
    await waitFor('probes loaded', linkUp, 60_000, 500);
    await waitFor('heartbeats stored', async () => (await events()).filter((e) => e.plugin === 'heartbeat').length >= 2, 30_000, 500);
  }, 300_000);

  afterAll(async () => {
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${trail.join('\n')}\n${d?.log.slice(-8000) ?? ''}`);
    await d?.killAll();
    await rig?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('virsh suspend for 30 s, then resume: no alarm, no action; analyze says the host paused it', async () => {
    await noFalseAlarm('suspend 30 s', 'user', async () => {
      await virsh('suspend', rig.name);
      await sleep(30_000);
      await virsh('resume', rig.name);
    });
  }, 240_000);

  it('virsh save, then restore: no alarm, no action across the new QEMU and the new link', async () => {
    const file = join(rig.dir, 'save.img');
    await noFalseAlarm('save and restore', 'save', async () => {
      await virsh('save', rig.name, file);
      expect((await virsh('domstate', '--reason', rig.name)).trim()).toBe('shut off (saved)');
      await sleep(5000); // saved for longer than the heartbeat limit
      await virsh('restore', file);
    });
    rmSync(file, { force: true });
  }, 300_000);

  it('a snapshot with memory (external, then --live): no alarm, no action', async () => {
    for (const live of [false, true]) {
      const mem = join(rig.dir, `mem-${live ? 'live' : 'paused'}.img`);
      await noFalseAlarm(
        `snapshot with memory${live ? ' --live' : ''}`,
        'snapshot',
        async () => {
          await virsh(
            'snapshot-create-as',
            rig.name,
            `vesper-${live ? 'live' : 'paused'}`,
            '--memspec',
            `file=${mem},snapshot=external`,
            '--no-metadata',
            ...(live ? ['--live'] : []),
          );
        },
        live ? expect.stringMatching(/^(snapshot|paused)$/) : 'snapshot',
      );
      rmSync(mem, { force: true });
    }
  }, 300_000);

  it.skip(`live migration: ${NO_MIGRATION}`, () => undefined);

  it('control: the agent SIGSTOPped in the guest for 10 s still raises heartbeat-lost and runs the action', async () => {
    await waitFor('link before stopping the agent', linkUp, 60_000, 500);
    const mark = await lastId();
    const firedBefore = firedLines().length;
    await rig.fault('stop-agent 10');
    const lost = await waitFor(
      'heartbeat-lost',
      async () => (await events()).find((e) => e.id > mark && e.plugin === 'channel' && e.event === 'heartbeat-lost'),
      30_000,
      500,
    );
    await waitFor('the action ran', () => firedLines().length > firedBefore, 30_000, 200);
    expect(firedLines().slice(firedBefore)).toContain('channel/heartbeat-lost');
    const a = await d.json<Analysis>(['analyze', rig.name, '--last']);
    expect(a.anchor.eventId).toBe(lost.id);
    expect(a.verdicts[0]?.kind).toBe('guest-hang');
    expect(a.verdicts.some((v) => v.kind === 'host-paused' && v.evidence.includes(lost.id))).toBe(false);
    await waitFor('link after the agent runs again', linkUp, 60_000, 500);
  }, 120_000);
});
