// No false alarm when the host stops the guest's clock: what libvirt's events mean for the hold
// (the lines are libvirt 9.0's, as seen on this machine kind), the hold itself (a session raises
// no heartbeat-lost while held, and gives the first beat after it the grace), vesperd's per-VM
// state (told once, released once, not undone by a stale domain list), and the analysis of it.
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { analyze, windowAround } from '../../host/analysis/analyze.js';
import { GuestSession } from '../../host/channel/guest-session.js';
import { HostPauses, holdChangeOf, whyOfStateReason } from '../../host/daemon/host-pause.js';
import type { GuestLink } from '../../host/daemon/guest-link.js';
import { EventLineParser, parseEventLine } from '../../host/libvirt/events.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { Scenario } from '../helpers/analysis-scenario.js';
import { sleep } from '../helpers/wait.js';

const line = (what: string): ReturnType<typeof parseEventLine> =>
  parseEventLine(`2026-12-07 07:03:49.430+0000: event 'lifecycle' for domain 'vm1': ${what}`);

describe('what a libvirt event means for the hold', () => {
  it('suspend, save, restore, snapshot and migration as libvirt 9.0 tells them', () => {
    expect(holdChangeOf(line('Suspended Paused'))).toEqual({ kind: 'hold', why: null });
    expect(holdChangeOf(line('Suspended Migrated'))).toEqual({ kind: 'hold', why: 'migration' });
    expect(holdChangeOf(line('Suspended Snapshot'))).toEqual({ kind: 'hold', why: 'snapshot' });
    expect(holdChangeOf(line('Suspended I/O Error'))).toEqual({ kind: 'hold', why: 'ioerror' });
    expect(holdChangeOf(line('Stopped Saved'))).toEqual({ kind: 'hold', why: 'save' });
    expect(holdChangeOf(line('Stopped Migrated'))).toEqual({ kind: 'hold', why: 'migration' });
    expect(holdChangeOf(line('Started Restored'))).toBeNull();
    expect(holdChangeOf(line('Started Migrated'))).toBeNull();
    expect(holdChangeOf(line('Resumed Snapshot'))).toEqual({ kind: 'release' });
    expect(holdChangeOf(line('Resumed Unpaused'))).toEqual({ kind: 'release' });
    expect(holdChangeOf(line('Resumed Migrated'))).toEqual({ kind: 'release' });
    expect(holdChangeOf(line('Stopped Destroyed'))).toEqual({ kind: 'drop' });
    expect(holdChangeOf(line('Started Booted'))).toEqual({ kind: 'drop' });
    expect(
      holdChangeOf(parseEventLine("2026-12-07 07:03:52.368+0000: event 'migration-iteration' for domain 'vm1': iteration: '1'")),
    ).toBeNull();
  });

  it("domstate --reason's words", () => {
    expect(whyOfStateReason('paused', 'user')).toBe('user');
    expect(whyOfStateReason('paused', 'saving')).toBe('save');
    expect(whyOfStateReason('paused', 'migrating')).toBe('migration');
    expect(whyOfStateReason('paused', 'creating snapshot')).toBe('snapshot');
    expect(whyOfStateReason('paused', 'from snapshot')).toBe('snapshot');
    expect(whyOfStateReason('paused', 'I/O error')).toBe('ioerror');
    expect(whyOfStateReason('paused', 'something new')).toBe('paused');
    expect(whyOfStateReason('shut off', 'saved')).toBe('save');
    expect(whyOfStateReason('shut off', 'destroyed')).toBeNull();
    expect(whyOfStateReason('running', 'restored')).toBeNull();
  });
});

let sessions: GuestSession[] = [];
afterEach(() => {
  for (const s of sessions) s.stop();
  sessions = [];
});

/** A session whose link never comes (the heartbeat limit runs all the same), beating every 50 ms at most 3 misses. */
function session(): { s: GuestSession; lost: number[] } {
  const s = new GuestSession({
    open: () => Promise.reject(new Error('no agent here')),
    module: () => ({}),
    minBackoffMs: 10_000,
    heartbeatMisses: 3,
  });
  sessions.push(s);
  const lost: number[] = [];
  s.on('heartbeat-lost', () => lost.push(Date.now()));
  s.on('linkFailed', () => undefined);
  void s.attach({ name: 'heartbeat', params: { interval_ms: '50' } });
  return { s, lost };
}

describe('a held session', () => {
  it('control: silence past 3 × 50 ms is heartbeat-lost', async () => {
    const { lost } = session();
    await sleep(400);
    expect(lost).toHaveLength(1);
  });

  it('raises no heartbeat-lost while held, and after the release only once the grace is past', async () => {
    const { s, lost } = session();
    s.holdHeartbeat();
    await sleep(500);
    expect(lost).toEqual([]);
    const released = Date.now();
    s.releaseHeartbeat(300);
    await sleep(300);
    expect(lost).toEqual([]); // 150 ms limit + 300 ms grace not yet past
    await sleep(400);
    expect(lost).toHaveLength(1);
    expect(lost[0]! - released).toBeGreaterThanOrEqual(440);
  });
});

interface FakeLink {
  holds: number;
  releases: number[];
}

function pauses(state: () => Promise<{ state: string; reason: string }>): { p: HostPauses; events: VesperEvent[]; link: FakeLink } {
  const events: VesperEvent[] = [];
  const link: FakeLink = { holds: 0, releases: [] };
  const fake = {
    hold: () => void link.holds++,
    release: (g: number) => {
      link.releases.push(g);
      return 0;
    },
  } as unknown as GuestLink;
  const p = new HostPauses({
    link: () => fake,
    stateOf: () => state(),
    hostEvent: (e) => events.push(e),
    log: pino({ level: 'silent' }),
    graceMs: 10_000,
    reasonTimeoutMs: 200,
  });
  return { p, events, link };
}

describe("vesperd's holds", () => {
  it('a save: held at the pause, why read from the state, kept across Stopped Saved and Started Restored, released at Resumed', async () => {
    const { p, events, link } = pauses(() => Promise.resolve({ state: 'paused', reason: 'saving' }));
    p.onEvent(line('Suspended Paused'));
    expect(p.isHeld('vm1')).toBe(true);
    expect(link.holds).toBe(1);
    await sleep(20);
    p.onEvent(line('Stopped Saved'));
    p.onEvent(line('Started Restored'));
    expect(p.isHeld('vm1')).toBe(true);
    p.onEvent(line('Resumed Snapshot'));
    expect(p.isHeld('vm1')).toBe(false);
    expect(link.releases).toEqual([10_000]);
    expect(events.map((e) => [e.plugin, e.event, e.payload['why']])).toEqual([
      ['channel', 'watch-held', 'save'],
      ['channel', 'watch-resumed', 'save'],
    ]);
    expect(events[1]!.payload).toMatchObject({ libvirt: 'Resumed Snapshot', graceMs: 10_000 });
  });

  it('a state that cannot be read: watch-held is told without it, once, before watch-resumed', async () => {
    const { p, events } = pauses(() => new Promise(() => undefined));
    p.onEvent(line('Suspended Paused'));
    p.onEvent(line('Resumed Unpaused'));
    await sleep(300);
    expect(events.map((e) => [e.event, e.payload['why']])).toEqual([
      ['watch-held', 'paused'],
      ['watch-resumed', 'paused'],
    ]);
  });

  it('reconcile: a paused domain missed while the event source was away is held; a stale list does not undo an event', async () => {
    const { p, events } = pauses(() => Promise.resolve({ state: 'paused', reason: 'user' }));
    p.reconcile('vm1', 'paused', Date.now());
    expect(p.isHeld('vm1')).toBe(true);
    await sleep(20);
    expect(events.map((e) => [e.event, e.payload['why']])).toEqual([['watch-held', 'user']]);
    // A list asked for before the hold began says 'running': stale, not acted on.
    p.reconcile('vm1', 'running', Date.now() - 60_000);
    expect(p.isHeld('vm1')).toBe(true);
    await sleep(5);
    p.reconcile('vm1', 'running', Date.now());
    expect(p.isHeld('vm1')).toBe(false);
  });

  it('a live snapshot: the pause too short for the state to tell; the job that ends names it', async () => {
    const { p, events } = pauses(() => Promise.resolve({ state: 'running', reason: 'unpaused' }));
    p.onEvent(line('Suspended Paused'));
    const [job] = new EventLineParser().push(
      "2026-12-07 07:04:10.043+0000: event 'job-completed' for domain 'vm1':\n\toperation: 6\n\ttime_elapsed: 2310\n",
    );
    p.onEvent(job!);
    p.onEvent(line('Resumed Unpaused'));
    await sleep(20);
    expect(events.map((e) => [e.event, e.payload['why']])).toEqual([
      ['watch-held', 'snapshot'],
      ['watch-resumed', 'snapshot'],
    ]);
  });

  it('a held domain destroyed: the hold ends without grace', async () => {
    const { p, events, link } = pauses(() => Promise.resolve({ state: 'paused', reason: 'user' }));
    p.onEvent(line('Suspended Paused'));
    await sleep(20);
    p.onEvent(line('Stopped Destroyed'));
    expect(p.isHeld('vm1')).toBe(false);
    expect(link.releases).toEqual([0]);
    expect(events.at(-1)!.payload).toMatchObject({ ended: true });
  });
});

describe('the analysis of a pause', () => {
  const around = (events: VesperEvent[], atUs: number) =>
    analyze(events, { vm: 'web1', window: windowAround(atUs), anchor: { mode: 'at', atUs, eventId: null } });

  it('suspend 30 s: a host pause, confident, no hang, no agent fault', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    const sus = s.libvirt(30_050, 'suspended', { event: 'Suspended', reason: 'Paused' });
    const held = s.channel(30_060, 'watch-held', { why: 'user', libvirt: 'Suspended Paused' });
    const res = s.libvirt(60_000, 'resumed', { event: 'Resumed', reason: 'Unpaused' });
    const back = s.channel(60_001, 'watch-resumed', { why: 'user', libvirt: 'Resumed Unpaused', heldMs: 29_940, graceMs: 10_000 });
    s.heartbeats(60_900, 90_000);
    const a = around(s.done(), held.hostTimeUs);
    expect(a.verdicts).toHaveLength(1);
    expect(a.verdicts[0]).toMatchObject({ kind: 'host-paused', scope: 'host', confidence: 'confident', details: { why: 'user' } });
    expect(a.verdicts[0]!.evidence).toEqual([sus.id, held.id, res.id, back.id]);
    expect(a.verdicts[0]!.summary).toContain('paused by an operator');
    expect(a.verdicts[0]!.summary).toContain('for 30 s');
  });

  it('save and restore: the stop, the start, the link made anew and the same agent belong to it', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    s.libvirt(30_050, 'suspended', { event: 'Suspended', reason: 'Paused' });
    const held = s.channel(30_300, 'watch-held', { why: 'save', libvirt: 'Suspended Paused' });
    const stop = s.libvirt(33_600, 'stopped', { event: 'Stopped', reason: 'Saved' });
    const start = s.libvirt(45_000, 'started', { event: 'Started', reason: 'Restored' });
    s.libvirt(45_050, 'resumed', { event: 'Resumed', reason: 'Snapshot' });
    s.channel(45_051, 'watch-resumed', { why: 'save', libvirt: 'Resumed Snapshot', heldMs: 15_000, graceMs: 10_000, linkDropped: true });
    const hello = s.channel(45_400, 'agent-connected', { agentPid: 300, bootId: 'boot-a', agentRestarted: true, repushed: [] });
    s.heartbeats(46_000, 80_000);
    const a = around(s.done(), held.hostTimeUs);
    expect(a.verdicts.map((v) => v.kind)).toEqual(['host-paused']);
    expect(a.verdicts[0]!.evidence).toEqual(expect.arrayContaining([stop.id, start.id, hello.id]));
    expect(a.verdicts[0]!.summary).toContain('saved to a file');
    expect(a.verdicts[0]!.summary).toContain('Stopped Saved');
  });

  it('a pause libvirt told but vesperd did not hold (an older vesperd): its heartbeat-lost is the pause’s, not a hang', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    s.libvirt(30_050, 'suspended', { event: 'Suspended', reason: 'Paused' });
    const lost = s.channel(33_000, 'heartbeat-lost', { silentMs: 3000, intervalMs: 1000 });
    s.libvirt(60_000, 'resumed', { event: 'Resumed', reason: 'Unpaused' });
    s.channel(61_000, 'heartbeat-back', { silentMs: 31_000 });
    s.heartbeats(61_000, 90_000);
    const a = around(s.done(), lost.hostTimeUs);
    expect(a.verdicts.map((v) => v.kind)).toEqual(['host-paused']);
    expect(a.verdicts[0]!.evidence).toContain(lost.id);
  });

  it('a hang a few seconds after a resume, once the agent beat again, is not the pause’s', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    s.libvirt(30_050, 'suspended', { event: 'Suspended', reason: 'Paused' });
    s.channel(30_060, 'watch-held', { why: 'user', libvirt: 'Suspended Paused' });
    s.libvirt(40_000, 'resumed', { event: 'Resumed', reason: 'Unpaused' });
    s.channel(40_001, 'watch-resumed', { why: 'user', libvirt: 'Resumed Unpaused', heldMs: 9_940, graceMs: 10_000 });
    s.heartbeats(40_900, 43_000);
    // the agent stops (SIGSTOP in the guest) 3 s after the resume: inside resume + grace + 5 s
    const lost = s.channel(46_100, 'heartbeat-lost', { silentMs: 3000, intervalMs: 1000 });
    s.channel(53_000, 'heartbeat-back', { silentMs: 10_000 });
    s.heartbeats(53_000, 70_000);
    const a = around(s.done(), lost.hostTimeUs);
    expect(a.verdicts.find((v) => v.evidence.includes(lost.id!))?.kind).not.toBe('host-paused');
    expect(a.verdicts.find((v) => v.kind === 'host-paused')?.evidence ?? []).not.toContain(lost.id);
  });

  it('control: the same heartbeat gap with no pause is still a (thin) hang', () => {
    const s = new Scenario();
    s.heartbeats(0, 30_000);
    const lost = s.channel(33_000, 'heartbeat-lost', { silentMs: 3000, intervalMs: 1000 });
    s.channel(61_000, 'heartbeat-back', { silentMs: 31_000 });
    s.heartbeats(61_000, 90_000);
    const a = around(s.done(), lost.hostTimeUs);
    expect(a.verdicts.map((v) => [v.kind, v.confidence])).toEqual([['guest-hang', 'uncertain']]);
  });
});
