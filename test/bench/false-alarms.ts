// distro.false_alarms: liveness actions fired while the host stopped the guest's clock (issue 19).
// A real guest under libvirtd, vesperd and the CLI as users run them, the heartbeat probe at
// 1 s, and an exec action on channel heartbeat-lost and agent-lost that appends to a file.
// Then trials in turn: `virsh suspend` for 5 s (beyond the 3 s heartbeat limit) and resume,
// `virsh save` then `restore`, an external snapshot with memory. After each, the guest must beat
// again and 4 s more pass. The figure is the number of action runs across all trials (target 0).
// A control trial at the end (the agent SIGSTOPped for 8 s inside the guest) must fire the
// action, or the figure proves nothing: distro.false_alarms.control_fired is 1 then.
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { VmRig } from '../rigs/vm/rig.js';
import { VesperdProcess, writeVesperdConfig, type EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { pct, round, type Metrics } from './stats.js';

const run = promisify(execFile);
const KINDS = ['suspend', 'save', 'snapshot'] as const;

export async function falseAlarmsBench(m: Metrics, o: { trials: number; log: (s: string) => void }): Promise<void> {
  const rig = new VmRig({ testHelpers: true, vcpus: 1, onProgress: (s, d) => o.log(`false-alarms: ${s}${d ? `: ${d}` : ''}`) });
  const dir = mkdtempSync('/tmp/vesper-falsealarm-');
  let d: VesperdProcess | undefined;
  try {
    await rig.prepare();
    (await rig.boot()).close();
    chmodSync(dir, 0o755);
    const fired = join(dir, 'fired');
    const script = join(dir, 'alarm.sh');
    writeFileSync(script, `#!/bin/sh\necho "$VESPER_PLUGIN/$VESPER_EVENT" >> ${fired}\n`, { mode: 0o755 });
    const socket = join(dir, 'run', 'vesperd.sock');
    d = new VesperdProcess(
      writeVesperdConfig(join(dir, 'vesper.yaml'), { socket, store: join(dir, 'events.db'), domains: [rig.name] }),
      socket,
    );
    await d.start();
    const vd = d;
    const events = async (): Promise<EventLine[]> =>
      (await vd.ok(['events', '--vm', rig.name, '--limit', '1000000', '-o', 'json']))
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as EventLine);
    const linkUp = (): Promise<boolean> => vd.probesLoaded(rig.name);
    const runs = (): number => (existsSync(fired) ? readFileSync(fired, 'utf8').trim().split('\n').filter(Boolean).length : 0);
    await vd.waitLinked(rig.name, 120_000, 500);
    await vd.ok(['attach', rig.name, 'heartbeat', '--param', 'interval_ms=1000']);
    for (const ev of ['heartbeat-lost', 'agent-lost'])
      await vd.ok(['filter', 'set', '--vm', rig.name, 'channel', '*', ev, 'action', 'exec', script]);
    await waitFor('probes loaded', linkUp, 60_000, 500);

    const virsh = (...a: string[]) => run('virsh', a, { timeout: 120_000 });
    const resumeToBeat: number[] = [];
    const heldMs: number[] = [];
    const perKind: Record<string, number> = {};
    let liveness = 0;
    for (let i = 0; i < o.trials; i++) {
      const kind = KINDS[i % KINDS.length]!;
      await waitFor('link before the trial', linkUp, 60_000, 500);
      const mark = Math.max(0, ...(await events()).map((e) => e.id));
      const before = runs();
      if (kind === 'suspend') {
        await virsh('suspend', rig.name);
        await sleep(5000);
        await virsh('resume', rig.name);
      } else if (kind === 'save') {
        const file = join(rig.dir, 'bench-save.img');
        await virsh('save', rig.name, file);
        await sleep(1000);
        await virsh('restore', file);
        rmSync(file, { force: true });
      } else {
        const file = join(rig.dir, `bench-mem-${i}.img`);
        await virsh('snapshot-create-as', rig.name, `bench-${i}`, '--memspec', `file=${file},snapshot=external`, '--no-metadata');
        rmSync(file, { force: true });
      }
      const resumed = await waitFor(
        'watch-resumed',
        async () => (await events()).find((e) => e.id > mark && e.plugin === 'channel' && e.event === 'watch-resumed'),
        120_000,
        500,
      );
      const beat = await waitFor(
        'a beat after the resume',
        async () => (await events()).find((e) => e.id > resumed.id && e.plugin === 'heartbeat' && e.event === 'beat'),
        60_000,
        200,
      );
      await sleep(4000);
      const since = (await events()).filter((e) => e.id > mark);
      const alarms = since.filter((e) => e.plugin === 'channel' && (e.event === 'heartbeat-lost' || e.event === 'agent-lost')).length;
      liveness += alarms;
      const fired = runs() - before;
      perKind[kind] = (perKind[kind] ?? 0) + fired;
      resumeToBeat.push((beat.hostTimeUs - resumed.hostTimeUs) / 1000);
      heldMs.push(Number((resumed.payload as { heldMs?: number } | null)?.heldMs ?? 0));
      o.log(
        `false-alarms: trial ${i + 1}/${o.trials} ${kind}: ${fired} action runs, ${alarms} liveness events, first beat ${Math.round(resumeToBeat.at(-1)!)} ms after the resume`,
      );
    }
    m['distro.false_alarms'] = Object.values(perKind).reduce((a, b) => a + b, 0);
    m['distro.false_alarms.trials'] = o.trials;
    for (const k of KINDS) m[`distro.false_alarms.${k}`] = perKind[k] ?? 0;
    m['distro.false_alarms.liveness_events'] = liveness;
    resumeToBeat.sort((a, b) => a - b);
    m['distro.false_alarms.resume_to_beat_ms.p50'] = round(pct(resumeToBeat, 50), 1);
    m['distro.false_alarms.resume_to_beat_ms.max'] = round(resumeToBeat.at(-1)!, 1);
    heldMs.sort((a, b) => a - b);
    m['distro.false_alarms.held_ms.p50'] = round(pct(heldMs, 50), 0);

    // The control: a real stop of the agent must still fire the action.
    await waitFor('link before the control', linkUp, 60_000, 500);
    const before = runs();
    await rig.fault('stop-agent 8');
    const ok = await waitFor('the action on a real stop', () => runs() > before, 30_000, 200).then(
      () => 1,
      () => 0,
    );
    m['distro.false_alarms.control_fired'] = ok;
    m['distro.false_alarms.accel'] = rig.accel;
  } finally {
    await d?.killAll();
    await rig.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
