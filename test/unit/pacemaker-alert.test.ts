// Pacemaker → vesper: the alert agent's environment as an event (alertEvent), the HostEvent
// request as the stored event with its VM (eventOfHostRequest), and the agent script itself
// with a fake vesper command: how it finds the command, what it passes, how it fails.
import { execFile } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PACEMAKER_PLUGIN, hostPluginSpec } from '../../host/notify/host-plugins.js';
import { PluginRegistry } from '../../host/notify/registry.js';
import { alertEvent, eventOfHostRequest, resourceIndex, vmOfResource, type AlertEnv } from '../../host/pacemaker/alert-event.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

const AGENT = resolve(import.meta.dirname, '../../host/pacemaker/alert-agent.sh');

/** A resource alert's environment as Pacemaker 2.1 sets it, CRM_notify_* twins included. */
function resourceEnv(over: Record<string, string> = {}): AlertEnv {
  const base: Record<string, string> = {
    CRM_alert_kind: 'resource',
    CRM_alert_version: '2.1.5',
    CRM_alert_recipient: '',
    CRM_alert_node_sequence: '17',
    CRM_alert_timestamp: '2026-11-22 10:00:00.250000',
    CRM_alert_timestamp_epoch: '1795341600',
    CRM_alert_timestamp_usec: '250000',
    CRM_alert_node: 'node1',
    CRM_alert_rsc: 'vm-web1',
    CRM_alert_task: 'start',
    CRM_alert_interval: '0',
    CRM_alert_target_rc: '0',
    CRM_alert_status: '0',
    CRM_alert_rc: '0',
    CRM_alert_exec_time: '1532',
    CRM_alert_desc: 'ok',
    CRM_notify_kind: 'resource',
    CRM_notify_rsc: 'vm-web1',
    PATH: '/usr/bin:/bin',
    ...over,
  };
  return base;
}

function usageError(fn: () => unknown): VesperError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(VesperError);
    expect((err as VesperError).code).toBe(ErrorCode.USAGE);
    return err as VesperError;
  }
  throw new Error('expected a usage error');
}

describe('alertEvent: the environment of one alert as an event', () => {
  it('a resource start: every CRM_alert_* field, integers as numbers, and Pacemaker’s time in µs', () => {
    const e = alertEvent(resourceEnv());
    expect(e.event).toBe('resource-started');
    expect(e.payload).toEqual({
      kind: 'resource',
      version: '2.1.5',
      nodeSequence: 17,
      timestamp: '2026-11-22 10:00:00.250000',
      timestampEpoch: 1_795_341_600,
      timestampUsec: 250_000,
      node: 'node1',
      rsc: 'vm-web1',
      task: 'start',
      interval: 0,
      targetRc: 0,
      status: 0,
      rc: 0,
      execTime: 1532,
      desc: 'ok',
      pacemakerTimeUs: 1_795_341_600_250_000,
    });
    // only CRM_alert_*, and no empty ones (CRM_alert_recipient)
    expect(Object.keys(e.payload)).not.toContain('recipient');
  });

  it.each([
    ['a stop', { CRM_alert_task: 'stop' }, 'resource-stopped'],
    [
      'a recurring monitor finding it stopped',
      { CRM_alert_task: 'monitor', CRM_alert_interval: '10000', CRM_alert_rc: '7', CRM_alert_desc: 'not running' },
      'resource-failed',
    ],
    [
      'crm_resource --fail (asyncmon, generic error)',
      { CRM_alert_task: 'asyncmon', CRM_alert_rc: '1', CRM_alert_status: '4', CRM_alert_desc: 'error' },
      'resource-failed',
    ],
    ['a start that timed out', { CRM_alert_status: '2', CRM_alert_rc: '1', CRM_alert_desc: 'Timed Out' }, 'resource-failed'],
    ['a stop that failed', { CRM_alert_task: 'stop', CRM_alert_rc: '1' }, 'resource-failed'],
    [
      'a cancelled monitor',
      { CRM_alert_task: 'monitor', CRM_alert_interval: '10000', CRM_alert_status: '1', CRM_alert_desc: 'Cancelled' },
      'resource-op',
    ],
    [
      'a probe finding it running where stopped was expected',
      { CRM_alert_task: 'monitor', CRM_alert_rc: '0', CRM_alert_target_rc: '7' },
      'resource-op',
    ],
    ['a probe finding an error', { CRM_alert_task: 'monitor', CRM_alert_rc: '1', CRM_alert_target_rc: '7' }, 'resource-failed'],
    ['a successful promote', { CRM_alert_task: 'promote' }, 'resource-op'],
    ['a live migration', { CRM_alert_task: 'migrate_to' }, 'resource-op'],
  ])('%s is %s', (_what, over, event) => {
    expect(alertEvent(resourceEnv(over)).event).toBe(event);
  });

  it('node, fencing and attribute alerts, and kinds it does not know', () => {
    const base = { CRM_alert_timestamp_epoch: '1795341600', CRM_alert_timestamp_usec: '7', CRM_alert_node: 'node2' };
    expect(alertEvent({ ...base, CRM_alert_kind: 'node', CRM_alert_desc: 'lost', CRM_alert_nodeid: '2' })).toEqual({
      event: 'node-lost',
      payload: {
        kind: 'node',
        desc: 'lost',
        nodeid: 2,
        node: 'node2',
        timestampEpoch: 1_795_341_600,
        timestampUsec: 7,
        pacemakerTimeUs: 1_795_341_600_000_007,
      },
    });
    expect(alertEvent({ ...base, CRM_alert_kind: 'node', CRM_alert_desc: 'member' }).event).toBe('node-joined');
    expect(alertEvent({ ...base, CRM_alert_kind: 'node', CRM_alert_desc: 'unknown' }).event).toBe('other');
    // a Pacemaker Remote node's id is its name
    expect(alertEvent({ ...base, CRM_alert_kind: 'node', CRM_alert_desc: 'member', CRM_alert_nodeid: 'remote1' }).payload['nodeid']).toBe(
      'remote1',
    );
    const fence = alertEvent({
      ...base,
      CRM_alert_kind: 'fencing',
      CRM_alert_task: 'reboot',
      CRM_alert_rc: '0',
      CRM_alert_desc: 'Operation reboot of node2 by node1 for pacemaker-controld.123@node1: OK',
    });
    expect(fence.event).toBe('fencing');
    expect(fence.payload).toMatchObject({ task: 'reboot', rc: 0, node: 'node2' });
    const attr = alertEvent({
      ...base,
      CRM_alert_kind: 'attribute',
      CRM_alert_attribute_name: 'vesper-health',
      CRM_alert_attribute_value: '0',
    });
    expect(attr.event).toBe('attribute');
    expect(attr.payload).toMatchObject({ attributeName: 'vesper-health', attributeValue: '0' });
    expect(alertEvent({ ...base, CRM_alert_kind: 'something-new' }).event).toBe('other');
    for (const name of ['node-lost', 'node-joined', 'fencing', 'attribute', 'other', 'resource-op'])
      expect(PACEMAKER_PLUGIN.events.map((e) => e.name)).toContain(name);
    // the plugin registers, for a VM and for the host, so that filters can name its events
    const r = new PluginRegistry();
    r.register(hostPluginSpec(PACEMAKER_PLUGIN, 'web1'));
    r.register(hostPluginSpec(PACEMAKER_PLUGIN, ''));
    expect(r.get('web1', 'pacemaker')?.events.map((e) => e.name)).toEqual(PACEMAKER_PLUGIN.events.map((e) => e.name));
  });

  it('no epoch: pacemakerTimeUs is null; a number field that is not a number stays text; huge values are cut', () => {
    const e = alertEvent({ CRM_alert_kind: 'resource', CRM_alert_task: 'start', CRM_alert_rc: 'x', CRM_alert_desc: 'd'.repeat(10_000) });
    expect(e.payload['pacemakerTimeUs']).toBeNull();
    expect(e.payload['rc']).toBe('x');
    expect((e.payload['desc'] as string).length).toBe(4096);
  });

  it('an environment without an alert is a usage error', () => {
    expect(usageError(() => alertEvent({ PATH: '/bin', CRM_notify_kind: 'resource' })).message).toContain('CRM_alert_kind is not set');
    usageError(() => alertEvent({ CRM_alert_kind: '' }));
  });
});

describe('eventOfHostRequest: the stored event and its VM', () => {
  const index = resourceIndex({ web1: { resource: 'vm-web1' }, db1: { resource: 'vm-db1' } });
  const req = (payload: Record<string, unknown>, over: Record<string, string> = {}) => ({
    plugin: 'pacemaker',
    vm: '',
    event: 'resource-failed',
    payloadJson: JSON.stringify(payload),
    ...over,
  });

  it("a resource's alert goes to the VM mapped to it (a clone's instance too), others to the host", () => {
    const e = eventOfHostRequest(req({ kind: 'resource', rsc: 'vm-web1', rc: 7 }), index, 123);
    expect(e).toEqual({
      vm: 'web1',
      plugin: 'pacemaker',
      instance: 0,
      event: 'resource-failed',
      guestTimeUs: null,
      hostTimeUs: 123,
      source: null,
      payload: { kind: 'resource', rsc: 'vm-web1', rc: 7 },
    });
    expect(eventOfHostRequest(req({ kind: 'resource', rsc: 'vm-db1:1' }), index, 1).vm).toBe('db1');
    expect(eventOfHostRequest(req({ kind: 'resource', rsc: 'vm-other' }), index, 1).vm).toBe('');
    expect(eventOfHostRequest(req({ kind: 'node', node: 'node2' }, { event: 'node-lost' }), index, 1).vm).toBe('');
    expect(eventOfHostRequest(req({ kind: 'resource', rsc: 'vm-web1' }, { vm: 'db1' }), index, 1).vm).toBe('db1');
    expect(vmOfResource(index, 'vm-web10')).toBeUndefined();
  });

  it('refuses other plugins, unknown events, payloads that are not JSON objects or too big', () => {
    expect(usageError(() => eventOfHostRequest(req({}, { plugin: 'libvirt' }), index, 1)).message).toBe(
      'host events are taken for the pacemaker plugin only, not "libvirt"',
    );
    expect(usageError(() => eventOfHostRequest(req({}, { event: 'exploded' }), index, 1)).message).toContain(
      'pacemaker has no event "exploded"',
    );
    usageError(() => eventOfHostRequest(req({}, { payloadJson: '{nope' }), index, 1));
    usageError(() => eventOfHostRequest(req({}, { payloadJson: '[1]' }), index, 1));
    usageError(() => eventOfHostRequest(req({ big: 'x'.repeat(70_000) }), index, 1));
    usageError(() => eventOfHostRequest(req({}, { vm: '*' }), index, 1));
  });
});

describe('alert-agent.sh', () => {
  let dir: string;
  let bin: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-agent-'));
    // PATH holds what the agent uses and a logger that records instead of writing to syslog.
    bin = join(dir, 'bin');
    mkdirSync(bin);
    for (const tool of ['readlink', 'dirname', 'timeout', 'cat'])
      for (const d of ['/usr/bin', '/bin'])
        if (existsSync(join(d, tool)) && !existsSync(join(bin, tool))) symlinkSync(join(d, tool), join(bin, tool));
    script(join(bin, 'logger'), `printf '%s\\n' "$*" >> '${join(dir, 'syslog')}'`);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** The agent where no built checkout is next to it, as when installed as a copy. */
  function installed(): string {
    mkdirSync(join(dir, 'lib'));
    copyFileSync(AGENT, join(dir, 'lib/alert-agent.sh'));
    return join(dir, 'lib/alert-agent.sh');
  }

  function script(path: string, body: string): string {
    writeFileSync(path, `#!/bin/sh\n${body}\n`);
    chmodSync(path, 0o755);
    return path;
  }

  /** A fake vesper: records its arguments and the alert it was given, then runs `body`. */
  function fakeCli(path: string, body = "echo 'pacemaker resource-started for web1'"): string {
    return script(
      path,
      `printf '%s\\n' "$*" > '${join(dir, 'argv')}'\n/usr/bin/env | /bin/grep '^CRM_alert_' | /usr/bin/sort > '${join(dir, 'env')}'\n${body}`,
    );
  }

  function run(agent: string, env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((done) => {
      execFile('/bin/sh', [agent], { env: { PATH: bin, ...env }, timeout: 20_000 }, (err, stdout, stderr) =>
        done({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr }),
      );
    });
  }

  const alert = { CRM_alert_kind: 'resource', CRM_alert_rsc: 'vm-web1', CRM_alert_task: 'start', CRM_alert_node: 'node1' };

  it('runs $VESPER_CLI alert-pacemaker with the alert in its environment', async () => {
    const cli = fakeCli(join(dir, 'vesper'));
    const r = await run(AGENT, { ...alert, VESPER_CLI: cli });
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(readFileSync(join(dir, 'argv'), 'utf8')).toBe('alert-pacemaker --timeout 20s\n');
    expect(readFileSync(join(dir, 'env'), 'utf8')).toBe(
      'CRM_alert_kind=resource\nCRM_alert_node=node1\nCRM_alert_rsc=vm-web1\nCRM_alert_task=start\n',
    );
    expect(existsSync(join(dir, 'syslog'))).toBe(false);
  });

  it("finds a built checkout's dist/host/vesper.mjs next to its real path, run with $VESPER_NODE", async () => {
    mkdirSync(join(dir, 'repo/host/pacemaker'), { recursive: true });
    mkdirSync(join(dir, 'repo/dist/host'), { recursive: true });
    copyFileSync(AGENT, join(dir, 'repo/host/pacemaker/alert-agent.sh'));
    writeFileSync(join(dir, 'repo/dist/host/vesper.mjs'), '');
    mkdirSync(join(dir, 'usr-lib-vesper'));
    // installed as a symlink to the checkout's copy, as /usr/lib/vesper/alert-agent.sh might be
    symlinkSync(join(dir, 'repo/host/pacemaker/alert-agent.sh'), join(dir, 'usr-lib-vesper/alert-agent.sh'));
    const node = fakeCli(join(dir, 'node'));
    const r = await run(join(dir, 'usr-lib-vesper/alert-agent.sh'), { ...alert, VESPER_NODE: node });
    expect(r.code).toBe(0);
    expect(readFileSync(join(dir, 'argv'), 'utf8')).toBe(
      `${dir}/repo/host/pacemaker/../../dist/host/vesper.mjs alert-pacemaker --timeout 20s\n`,
    );
  });

  it("prefers the checkout's dist/host/vesper-alert.mjs, the sender alone, which takes no verb", async () => {
    mkdirSync(join(dir, 'repo/host/pacemaker'), { recursive: true });
    mkdirSync(join(dir, 'repo/dist/host'), { recursive: true });
    copyFileSync(AGENT, join(dir, 'repo/host/pacemaker/alert-agent.sh'));
    writeFileSync(join(dir, 'repo/dist/host/vesper.mjs'), '');
    writeFileSync(join(dir, 'repo/dist/host/vesper-alert.mjs'), '');
    const node = fakeCli(join(dir, 'node'));
    const r = await run(join(dir, 'repo/host/pacemaker/alert-agent.sh'), { ...alert, VESPER_NODE: node });
    expect(r.code).toBe(0);
    expect(readFileSync(join(dir, 'argv'), 'utf8')).toBe(`${dir}/repo/host/pacemaker/../../dist/host/vesper-alert.mjs --timeout 20s\n`);
  });

  it('VESPER_ALERT_LOG gets one line per alert: which, how long, sent or not and why', async () => {
    for (const tool of ['date', 'awk']) symlinkSync(existsSync(`/usr/bin/${tool}`) ? `/usr/bin/${tool}` : `/bin/${tool}`, join(bin, tool));
    const log = join(dir, 'alerts.log');
    const ok = fakeCli(join(dir, 'vesper'));
    expect((await run(AGENT, { ...alert, CRM_alert_node_sequence: '7', VESPER_CLI: ok, VESPER_ALERT_LOG: log })).code).toBe(0);
    const bad = fakeCli(join(dir, 'vesper-bad'), "echo 'vesper: VSP_DAEMON_UNREACHABLE: vesperd is not running' >&2\nexit 69");
    expect((await run(AGENT, { ...alert, CRM_alert_node_sequence: '8', VESPER_CLI: bad, VESPER_ALERT_LOG: log })).code).toBe(69);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(
      /^\d{4}-\d\d-\d\dT\S+ seq=7 kind=resource task=start rsc=vm-web1 node=node1 rc=- status=- took=\d+\.\d\ds: sent: pacemaker resource-started for web1$/,
    );
    expect(lines[1]).toMatch(/ seq=8 .* took=\d+\.\d\ds: not sent \(exit 69\): vesper: VSP_DAEMON_UNREACHABLE: vesperd is not running$/);
  });

  it('falls back to vesper in PATH; without any, logs to syslog and stderr and fails', async () => {
    const agent = installed();
    fakeCli(join(bin, 'vesper'));
    expect((await run(agent, alert)).code).toBe(0);
    expect(readFileSync(join(dir, 'argv'), 'utf8')).toBe('alert-pacemaker --timeout 20s\n');
    rmSync(join(bin, 'vesper'));
    const r = await run(agent, alert);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('cannot find the vesper command');
    expect(readFileSync(join(dir, 'syslog'), 'utf8')).toContain('-t vesper-alert -p daemon.warning -- cannot find the vesper command');
  });

  it("a failure of the CLI is logged with what it said, and its status is the agent's", async () => {
    const cli = fakeCli(join(dir, 'vesper'), "echo 'vesper: VSP_DAEMON_UNREACHABLE: vesperd is not running' >&2\nexit 69");
    const r = await run(AGENT, { ...alert, VESPER_CLI: cli });
    expect(r.code).toBe(69);
    expect(r.stderr).toContain('resource alert (task start, resource vm-web1, node node1) not sent: vesper: VSP_DAEMON_UNREACHABLE');
    expect(readFileSync(join(dir, 'syslog'), 'utf8')).toContain('not sent: vesper: VSP_DAEMON_UNREACHABLE');
  });

  it('is bounded: a CLI that hangs is stopped after VESPER_ALERT_TIMEOUT + 1 s', async () => {
    const cli = fakeCli(join(dir, 'vesper'), 'exec /bin/sleep 30');
    const t0 = Date.now();
    const r = await run(AGENT, { ...alert, VESPER_CLI: cli, VESPER_ALERT_TIMEOUT: '1' });
    expect(Date.now() - t0).toBeLessThan(6000);
    expect(r.code).toBe(124);
    expect(readFileSync(join(dir, 'argv'), 'utf8')).toBe('alert-pacemaker --timeout 1s\n');
    expect(r.stderr).toContain('not sent: no answer within 2s');
  });

  it('run by hand, without an alert, says so and does nothing', async () => {
    const cli = fakeCli(join(dir, 'vesper'));
    const r = await run(AGENT, { VESPER_CLI: cli });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('not run by Pacemaker');
    expect(existsSync(join(dir, 'argv'))).toBe(false);
  });

  it('is executable', () => {
    expect(readFileSync(AGENT, 'utf8').startsWith('#!/bin/sh\n')).toBe(true);
  });
});
