// vesper feeding a real Pacemaker: Corosync and Pacemaker from Debian (one node), the test
// guest as an ocf:heartbeat:VirtualDomain resource with a 10 s monitor and a monitor script, a
// real libvirtd, vesperd as the process users run, and real faults in the guest's demo service.
// A fault with a pacemaker-fail filter makes Pacemaker recover the resource at once and its
// alerts come back into vesper's events; pacemaker-attr stops the resource while its node is
// marked unhealthy; with Pacemaker stopped the action fails with a clear error and the event
// is still stored.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RIG_SCRIPT } from '../rigs/pacemaker/rig.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { NODE, PacemakerVm } from '../helpers/pacemaker-vm.js';
import type { EventLine } from '../helpers/vesperd-process.js';
import { waitFor } from '../helpers/wait.js';

function whyNot(): string {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'needs an x86-64 Linux host';
  if (process.getuid?.() !== 0) return 'needs root (libvirtd, QEMU, corosync and pacemakerd)';
  const r = spawnSync('bash', [RIG_SCRIPT, 'install'], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 15 * 60_000 });
  if (r.status === 100) return `the Pacemaker/Corosync Debian packages could not be installed: ${r.stderr.trim().split('\n').pop()}`;
  return '';
}

const why = whyNot();
if (why) console.warn(`SKIP pacemaker tests: ${why}`);

const signalTo = (pid: number) => (e: EventLine) =>
  e.event === 'signal' && (e.payload?.['signal'] as { target?: { pid?: number } } | undefined)?.target?.pid === pid;

describe.skipIf(Boolean(why))('vesper feeding a real Pacemaker', () => {
  let s: PacemakerVm;
  const trail: string[] = [];

  beforeAll(async () => {
    s = await PacemakerVm.start({ onProgress: (l) => (console.warn(l), trail.push(l)) });
    await s.vesperd.ok(['attach', s.rig.name, 'signal', '--param', 'comms=vesper-demo-svc']);
    await s.waitLinked(60_000);
  }, 900_000);

  afterAll(async () => {
    if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${trail.join('\n')}\n${s?.vesperd?.log ?? ''}`);
    await s?.stop();
  }, 180_000);

  it('a service fault with a pacemaker-fail filter: Pacemaker records it and restarts the VM; its alerts come back', async () => {
    await s.vesperd.ok(['filter', 'set', '--vm', s.rig.name, 'signal', '*', 'signal', 'action', 'pacemaker-fail']);
    const from = s.lastId;
    const before = await s.pcmk.resourceState(s.resource);
    const [pid] = numbersIn(await s.rig.fault('segv-svc'));

    const sig = await waitFor('vesper sees the SIGSEGV', () => s.eventsOf('signal', from).find(signalTo(pid!)), 30_000, 50);
    expect((sig.payload?.['signal'] as { sig: number }).sig).toBe(11);
    const done = await waitFor(
      'the pacemaker-fail action done',
      () => s.eventsOf('action', from).find((e) => e.payload?.['action'] === 'pacemaker-fail'),
      30_000,
      50,
    );
    expect(done.event, JSON.stringify(done.payload)).toBe('done');
    // Pacemaker's side, as its alerts told vesperd: the failure, then the resource started again.
    // (On a timeout the error says what was seen: the alerts, the agent's record, Pacemaker's log.)
    const failed = await s.waitForPacemaker(
      'Pacemaker alert: resource failed',
      () => s.eventsOf('pacemaker', from).find((e) => e.event === 'resource-failed' && e.payload?.['rsc'] === s.resource),
      60_000,
      100,
    );
    expect(failed.vm).toBe(s.rig.name);
    const started = await s.waitForPacemaker(
      'Pacemaker alert: resource started again',
      () => s.eventsOf('pacemaker', failed.id).find((e) => e.event === 'resource-started' && e.payload?.['rsc'] === s.resource),
      240_000,
      250,
    );
    expect(started.payload?.['node']).toBe(NODE);
    const after = await s.pcmk.resourceState(s.resource);
    expect(after.running).toBe(true);
    expect(after.failCount).toBeGreaterThan(before.failCount);
    // The guest came back with its service (VirtualDomain's start waits for the monitor script).
    expect(await s.rig.fault('svc')).toMatch(/^ok svc \d+/);
    await s.waitLinked(120_000);
  }, 420_000);

  it('pacemaker-attr marks the node unhealthy: the one-node cluster stops the VM, and starts it once healthy', async () => {
    await s.pcmk.check(NODE, 'cibadmin', [
      '--create',
      '--scope',
      'constraints',
      '--xml-text',
      `<rsc_location id="vesper-health-${s.resource}" rsc="${s.resource}">` +
        `<rule id="vesper-health-${s.resource}-rule" score="-INFINITY">` +
        `<expression id="vesper-health-${s.resource}-expr" attribute="vesper-health" operation="eq" value="0"/></rule></rsc_location>`,
    ]);
    await s.vesperd.ok(['filter', 'set', '--vm', s.rig.name, 'signal', '*', 'signal', 'action', 'pacemaker-attr']);
    const from = s.lastId;
    await s.rig.fault('segv-svc');
    const done = await waitFor(
      'the pacemaker-attr action done',
      () => s.eventsOf('action', from).find((e) => e.payload?.['action'] === 'pacemaker-attr'),
      30_000,
      50,
    );
    expect(done.event, JSON.stringify(done.payload)).toBe('done');
    await s.waitStopped(60_000);
    // Healthy again: the rule no longer applies and Pacemaker starts the VM.
    await s.pcmk.check(NODE, 'attrd_updater', ['-n', 'vesper-health', '-U', '1', '-N', NODE]);
    await s.waitRunning(240_000);
    expect(await s.rig.fault('svc')).toMatch(/^ok svc \d+/);
    await s.waitLinked(120_000);
    await s.pcmk.check(NODE, 'attrd_updater', ['-n', 'vesper-health', '-D', '-N', NODE]);
  }, 420_000);

  it('with Pacemaker stopped, the action fails with VSP_PACEMAKER_UNAVAILABLE and the event is still stored', async () => {
    // Unmanaged, so that stopping the cluster leaves the VM running.
    await s.pcmk.check(NODE, 'crm_resource', ['-r', s.resource, '--meta', '-p', 'is-managed', '-v', 'false']);
    await s.pcmk.stop();
    await s.vesperd.ok(['filter', 'set', '--vm', s.rig.name, 'signal', '*', 'signal', 'action', 'pacemaker-fail']);
    const from = s.lastId;
    const [pid] = numbersIn(await s.rig.fault('segv-svc'));
    await waitFor('vesper sees the SIGSEGV', () => s.eventsOf('signal', from).find(signalTo(pid!)), 30_000, 50);
    const failed = await waitFor(
      'the pacemaker-fail action reported',
      () => s.eventsOf('action', from).find((e) => e.payload?.['action'] === 'pacemaker-fail'),
      30_000,
      50,
    );
    expect(failed.event).toBe('failed');
    expect((failed.payload?.['error'] as { code: string }).code).toBe('VSP_PACEMAKER_UNAVAILABLE');
    // Stored: a query of the store (not the live stream) has it.
    const stored = (await s.vesperd.ok(['events', '--vm', s.rig.name, '--plugin', 'signal', '--since', '5m', '-o', 'json']))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as EventLine);
    expect(stored.some(signalTo(pid!))).toBe(true);
    await s.rig.fault('release-svc');
  }, 180_000);
});
