// The manager's API over a real unix socket: the CLI's client, vesperd's server, a manager
// behind it made of the real queue (the store and libvirt are the acceptance test's).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiClient } from '../../host/cli/api-client.js';
import { buildProgram, keyValues, sinceUs } from '../../host/cli/main.js';
import { eventJson, summaryOf } from '../../host/cli/output.js';
import { ApiServer, type DaemonApi } from '../../host/daemon/api-server.js';
import type { EventQuery } from '../../host/store/event-query.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { EventQueue } from '../../host/notify/queue.js';
import { analyzeFromStore } from '../../host/analysis/analyze.js';
import type { apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { memorySource } from '../helpers/memory-events.js';
import { waitFor } from '../helpers/wait.js';

function ev(id: number, vm = 'web1'): VesperEvent {
  return {
    id,
    vm,
    plugin: 'signal',
    instance: 0,
    event: 'signal',
    guestTimeUs: 1_000 + id,
    hostTimeUs: 2_000 + id,
    source: { agentRun: 'boot/1', seq: id },
    payload: { signal: { sig: 11, target: { pid: 7, comm: 'demo' } } },
    disposition: 'notify',
  };
}

/** A manager whose events live in an array and a real EventQueue. */
class ArrayManager implements DaemonApi {
  readonly stored: VesperEvent[] = [];
  readonly queue = new EventQueue({ capacity: 64 });
  attachCalls: Array<{ vm: string; probes: string[] }> = [];
  listVms(): Promise<apipb.IVmSummary[]> {
    return Promise.resolve([{ name: 'web1', state: 'running', link: 'connected', probes: ['signal'] }]);
  }
  vmStatus(vm: string): Promise<apipb.IVmDetail> {
    if (vm !== 'web1') return Promise.reject(new VesperError(ErrorCode.VM_NOT_FOUND, `no VM named ${vm}`));
    return Promise.resolve({ summary: { name: vm } });
  }
  probeCatalogue(): apipb.IProbeInfo[] {
    return [];
  }
  attach(vm: string, probes: string[]): Promise<apipb.IAttachedProbe[]> {
    this.attachCalls.push({ vm, probes });
    return Promise.resolve(probes.map((name) => ({ name, instances: 1, loaded: true })));
  }
  detach(): Promise<void> {
    return Promise.resolve();
  }
  paramGet(): Record<string, string> {
    return { signals: 'SEGV' };
  }
  paramSet(): Promise<void> {
    return Promise.resolve();
  }
  filterList(): apipb.IFilterRule[] {
    return [];
  }
  filterSet(): void {}
  filterClear(): number {
    return 0;
  }
  queryEvents(q: EventQuery): VesperEvent[] {
    const r = this.stored.filter(
      (e) => (!q.vm || e.vm === q.vm) && (e.id ?? 0) > (q.afterId ?? 0) && (e.id ?? 0) < (q.beforeId ?? Infinity),
    );
    return (q.order === 'desc' ? r.reverse() : r).slice(0, q.limit ?? 1000);
  }
  follow(q: EventQuery) {
    const sub = this.queue.subscribe({ match: (e) => !q.vm || e.vm === q.vm });
    return { pull: (max: number) => sub.take(max), onReadable: (cb: () => void) => sub.onReadable(cb), close: () => sub.close() };
  }
  publish(e: VesperEvent): void {
    this.stored.push(e);
    this.queue.publish(e);
  }
  analyze(req: apipb.IAnalyze): Promise<string> {
    try {
      const a = analyzeFromStore(memorySource(this.stored), { vm: req.vm ?? '', atUs: Number(req.atUs ?? 0), last: Boolean(req.last) });
      return Promise.resolve(JSON.stringify(a));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  sinkStates(): apipb.ISinkState[] {
    return [
      {
        name: 'tickets',
        kind: 'webhook',
        cursor: 41,
        backlog: 7,
        delivered: 41,
        failures: 2,
        lost: 0,
        lastError: 'http://x answered 503',
        lastErrorAtMs: 1,
        lastDeliveredAtMs: 2,
        status: 'retrying',
      },
    ];
  }
  daemonStatus(): apipb.IDaemonDetail {
    return {
      version: '9.9.9',
      pid: 1,
      uptimeS: 61,
      configPath: '/etc/vesper/vesper.yaml',
      storePath: '/x.db',
      metricsListen: 'off',
      sinks: this.sinkStates(),
    };
  }
  readonly backups: string[] = [];
  storeBackup(path: string): Promise<string> {
    this.backups.push(path);
    return Promise.resolve(`backed up to ${path}`);
  }
  readonly hostEvents: apipb.IHostEvent[] = [];
  submitHostEvent(e: apipb.IHostEvent): Promise<string> {
    this.hostEvents.push(e);
    return Promise.resolve(`${e.plugin} ${e.event} for the host`);
  }
}

describe('the manager API over a unix socket', () => {
  let dir: string;
  let m: ArrayManager;
  let server: ApiServer;
  let socket: string;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-api-'));
    socket = join(dir, 'run', 'vesperd.sock');
    m = new ArrayManager();
    server = new ApiServer(m, { socket, group: 'no-such-group-vesper-test', log: pino({ level: 'silent' }) });
    await server.listen();
  });
  afterEach(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers requests and turns manager errors into coded replies', async () => {
    const c = await ApiClient.connect(socket);
    try {
      const r = await c.request({ list: {} });
      expect(r.vms?.vms?.[0]?.name).toBe('web1');
      const a = await c.request({ attach: { vm: 'web1', probes: ['signal', 'oom'] } });
      expect(a.attached?.attached?.map((x) => x.name)).toEqual(['signal', 'oom']);
      expect(m.attachCalls).toEqual([{ vm: 'web1', probes: ['signal', 'oom'] }]);
      const err = await c.request({ status: { vm: 'nope' } }).catch((e: VesperError) => e);
      expect(err).toBeInstanceOf(VesperError);
      expect((err as VesperError).code).toBe(ErrorCode.VM_NOT_FOUND);
      const usage = await c.request({ status: {} }).catch((e: VesperError) => e);
      expect((usage as VesperError).code).toBe(ErrorCode.USAGE);
    } finally {
      c.close();
    }
  });

  it('`vesper status` without a VM prints the daemon and its export sinks; `vesper store backup` sends an absolute path', async () => {
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'status', '-o', 'json']);
      const j = JSON.parse(String(out.mock.calls[0]![0])) as { version: string; uptimeS: number; sinks: Array<Record<string, unknown>> };
      expect(j).toMatchObject({ version: '9.9.9', uptimeS: 61, config: '/etc/vesper/vesper.yaml', metrics: 'off' });
      expect(j.sinks[0]).toMatchObject({
        name: 'tickets',
        kind: 'webhook',
        status: 'retrying',
        cursor: 41,
        backlog: 7,
        failures: 2,
        lost: 0,
      });
      out.mockClear();
      await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'status']);
      const text = out.mock.calls.map((c) => String(c[0])).join('');
      expect(text).toMatch(/^vesperd:\s+9\.9\.9 \(pid 1\), up 1m 1s$/m);
      expect(text).toMatch(/SINK\s+KIND\s+STATUS\s+CURSOR\s+BACKLOG/);
      expect(text).toMatch(/tickets\s+webhook\s+retrying\s+41\s+7/);
      expect(text).toContain('answered 503');
      out.mockClear();
      await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'store', 'backup', 'rel/copy.db']);
      expect(m.backups).toEqual([join(process.cwd(), 'rel/copy.db')]);
      expect(String(out.mock.calls[0]![0])).toContain('backed up to');
    } finally {
      out.mockRestore();
    }
  });

  it('`vesper analyze` asks vesperd and prints the analysis as JSON or as text, verdicts first', async () => {
    const demo = { pid: 7, comm: 'demo' };
    m.publish({ ...ev(1), payload: { signal: { sig: 11, code: 1, result: 0, senderIsKernel: true, target: demo, sender: demo } } });
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'web1', '--last', '-o', 'json']);
    const a = JSON.parse(String(out.mock.calls[0]![0])) as { vm: string; anchor: { eventId: number }; verdicts: Array<{ kind: string }> };
    expect(a.vm).toBe('web1');
    expect(a.anchor.eventId).toBe(1);
    expect(a.verdicts[0]?.kind).toBe('app-crash');
    out.mockClear();
    await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'web1']);
    const text = String(out.mock.calls[0]![0]);
    expect(text.indexOf('VERDICTS')).toBeLessThan(text.indexOf('TIMELINE'));
    expect(text).toContain('1. app-crash (service, confident)');
    out.mockClear();
    await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'web1', '-o', 'html']);
    expect(String(out.mock.calls[0]![0])).toMatch(/^<!DOCTYPE html>/i);
    const none = await buildProgram()
      .parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'db9', '--last'])
      .catch((x: VesperError) => x);
    expect((none as VesperError).code).toBe(ErrorCode.ANALYSIS_NO_FAILURE);
    const both = await buildProgram()
      .parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'web1', '--last', '--at', '5m'])
      .catch((x: VesperError) => x);
    expect((both as VesperError).code).toBe(ErrorCode.USAGE);
    const badWindow = await buildProgram()
      .parseAsync(['node', 'vesper', '--socket', socket, 'analyze', 'web1', '--window', 'soon'])
      .catch((x: VesperError) => x);
    expect((badWindow as VesperError).code).toBe(ErrorCode.USAGE);
  });

  it('without the group, the socket is for root only (mode 0600)', () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  it('a missing daemon and a refused socket are told apart by code', async () => {
    const gone = await ApiClient.connect(join(dir, 'none.sock')).catch((e: VesperError) => e);
    expect((gone as VesperError).code).toBe(ErrorCode.DAEMON_UNREACHABLE);
  });

  it('follows: past events, then new ones in order, none twice', async () => {
    m.publish(ev(1));
    m.publish(ev(2));
    const c = await ApiClient.connect(socket);
    const got: number[] = [];
    try {
      c.stream({ events: { follow: true } }, (r) => {
        for (const e of r.events?.events ?? []) got.push(Number(e.id));
      });
      await waitFor('past events', () => got.length >= 2, 5000);
      m.publish(ev(3));
      m.publish(ev(4, 'other'));
      m.publish(ev(5));
      await waitFor('new events', () => got.length >= 5, 5000);
      expect(got).toEqual([1, 2, 3, 4, 5]);
    } finally {
      c.close();
    }
  });

  it('past events: the newest 100 by default (saying older ones exist), a cursor pages everything after it', async () => {
    for (let i = 1; i <= 2500; i++) m.publish(ev(i));
    const c = await ApiClient.connect(socket);
    const read = (events: apipb.IEvents): Promise<{ ids: number[]; truncated: boolean }> =>
      new Promise((resolve) => {
        const ids: number[] = [];
        let truncated = false;
        c.stream({ events }, (r) => {
          for (const e of r.events?.events ?? []) ids.push(Number(e.id));
          truncated ||= Boolean(r.events?.truncated);
          if (r.done) resolve({ ids, truncated });
        });
      });
    const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, k) => a + k);
    try {
      expect(await read({})).toEqual({ ids: range(2401, 2500), truncated: true });
      expect(await read({ limit: 3 })).toEqual({ ids: [2498, 2499, 2500], truncated: true });
      expect(await read({ limit: 2600 })).toEqual({ ids: range(1, 2500), truncated: false });
      expect(await read({ afterId: 10 })).toEqual({ ids: range(11, 2500), truncated: false });
      expect(await read({ afterId: 10, limit: 5 })).toEqual({ ids: range(11, 15), truncated: true });
      expect(await read({ afterId: 2495, limit: 5 })).toEqual({ ids: range(2496, 2500), truncated: false });
    } finally {
      c.close();
    }
  });

  it('a follower that falls behind the queue reads what it overwrote from the store: nothing is missed, nothing twice', async () => {
    const c = await ApiClient.connect(socket);
    let missed = 0;
    const seen: number[] = [];
    try {
      c.stream({ events: { follow: true } }, (r) => {
        missed += Number(r.events?.missed ?? 0);
        for (const e of r.events?.events ?? []) seen.push(Number(e.id));
      });
      await waitFor('subscribed', () => m.queue.subscribers === 1, 5000);
      // 2,500 events in one turn into a queue of 64: the follower reads the older ones from the
      // store, in pages, then the queue again.
      for (let i = 1; i <= 2500; i++) m.publish(ev(i));
      await waitFor('delivered', () => seen.length >= 2500, 5000);
      for (let i = 2501; i <= 2510; i++) m.publish(ev(i));
      await waitFor('delivered after', () => seen.length >= 2510, 5000);
      expect(seen).toEqual(Array.from({ length: 2510 }, (_, k) => k + 1));
      expect(missed).toBe(0);
    } finally {
      c.close();
    }
  });
});

describe('the Pacemaker alert socket', () => {
  let dir: string;
  let m: ArrayManager;
  let server: ApiServer;
  let socket: string;
  const alertEnv = {
    CRM_alert_kind: 'resource',
    CRM_alert_version: '2.1.5',
    CRM_alert_node: 'node1',
    CRM_alert_rsc: 'vm-web1',
    CRM_alert_task: 'monitor',
    CRM_alert_interval: '10000',
    CRM_alert_rc: '7',
    CRM_alert_target_rc: '0',
    CRM_alert_status: '0',
    CRM_alert_desc: 'not running',
    CRM_alert_timestamp_epoch: '1795000000',
    CRM_alert_timestamp_usec: '123456',
  };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-alert-api-'));
    socket = join(dir, 'alert', 'alert.sock');
    m = new ArrayManager();
    server = new ApiServer(m, {
      socket,
      group: 'no-such-group-vesper-test',
      log: pino({ level: 'silent' }),
      only: ['hostEvent'],
      dirMode: 0o755,
    });
    await server.listen();
    for (const [k, v] of Object.entries(alertEnv)) process.env[k] = v;
  });
  afterEach(async () => {
    for (const k of Object.keys(alertEnv)) delete process.env[k];
    vi.restoreAllMocks();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes host events and refuses every other request with VSP_PERMISSION_DENIED', async () => {
    expect(statSync(join(dir, 'alert')).mode & 0o777).toBe(0o755);
    const c = await ApiClient.connect(socket);
    try {
      const r = await c.request({ hostEvent: { plugin: 'pacemaker', event: 'node-lost', payloadJson: '{"kind":"node"}' } });
      expect(r.ok?.message).toBe('pacemaker node-lost for the host');
      for (const req of [
        { list: {} },
        { filterSet: { rule: { plugin: 'a', event: 'b', decision: 'action', action: 'exec', args: ['/bin/sh'] } } },
      ]) {
        const err = await c.request(req).catch((e: VesperError) => e);
        expect((err as VesperError).code).toBe(ErrorCode.PERMISSION_DENIED);
        expect((err as VesperError).message).toContain('takes only hostEvent requests');
      }
      expect(m.hostEvents).toHaveLength(1);
    } finally {
      c.close();
    }
  });

  it('`vesper alert-pacemaker` sends the alert of its environment and prints what became of it', async () => {
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    await buildProgram().parseAsync(['node', 'vesper', '--socket', socket, 'alert-pacemaker']);
    expect(m.hostEvents).toHaveLength(1);
    const e = m.hostEvents[0]!;
    expect([e.plugin, e.vm, e.event]).toEqual(['pacemaker', '', 'resource-failed']);
    expect(JSON.parse(e.payloadJson!)).toMatchObject({
      kind: 'resource',
      rsc: 'vm-web1',
      node: 'node1',
      task: 'monitor',
      interval: 10_000,
      rc: 7,
      targetRc: 0,
      status: 0,
      pacemakerTimeUs: 1_795_000_000_123_456,
    });
    expect(out).toHaveBeenCalledWith('pacemaker resource-failed for the host\n');
  });

  it('--dry-run prints the event instead; without an alert in the environment it is a usage error', async () => {
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    await buildProgram().parseAsync(['node', 'vesper', '--socket', join(dir, 'none.sock'), 'alert-pacemaker', '--dry-run']);
    const printed = JSON.parse(String(out.mock.calls[0]![0])) as { event: string; payload: Record<string, unknown> };
    expect(printed.event).toBe('resource-failed');
    expect(printed.payload['rsc']).toBe('vm-web1');
    expect(m.hostEvents).toHaveLength(0);
    delete process.env['CRM_alert_kind'];
    const err = await buildProgram()
      .parseAsync(['node', 'vesper', '--socket', socket, 'alert-pacemaker'])
      .catch((x: VesperError) => x);
    expect((err as VesperError).code).toBe(ErrorCode.USAGE);
    expect((err as VesperError).message).toContain('CRM_alert_kind');
  });

  it('a vesperd that does not answer in time is VSP_REQUEST_TIMEOUT, not a hang', async () => {
    const slow = new ArrayManager();
    slow.submitHostEvent = () => new Promise<string>(() => undefined);
    const s2 = join(dir, 'slow.sock');
    const server2 = new ApiServer(slow, { socket: s2, group: 'no-such-group-vesper-test', log: pino({ level: 'silent' }) });
    await server2.listen();
    try {
      const err = await buildProgram()
        .parseAsync(['node', 'vesper', '--socket', s2, 'alert-pacemaker', '--timeout', '200ms'])
        .catch((x: VesperError) => x);
      expect((err as VesperError).code).toBe(ErrorCode.REQUEST_TIMEOUT);
    } finally {
      await server2.close();
    }
  });
});

describe('CLI argument helpers', () => {
  it('has the virsh-style verbs, and an action keeps its own options', async () => {
    const p = buildProgram();
    expect(p.commands.map((c) => c.name()).sort()).toEqual([
      'agent',
      'alert-pacemaker',
      'analyze',
      'attach',
      'channel',
      'config',
      'daemon',
      'detach',
      'events',
      'failover',
      'filter',
      'fleet',
      'list',
      'param',
      'probes',
      'status',
      'store',
    ]);
    // No daemon here: the verb fails to connect, after parsing the action's arguments as words.
    const sock = join(tmpdir(), `vesper-none-${process.pid}.sock`);
    const err = await p
      .parseAsync([
        'node',
        'vesper',
        '--socket',
        sock,
        'filter',
        'set',
        '--vm',
        'db1',
        'libvirt',
        '*',
        'crashed',
        'action',
        'failover',
        '--standby-uri',
        'qemu+ssh://b/system',
      ])
      .catch((e: VesperError) => e);
    expect((err as VesperError).code).toBe(ErrorCode.DAEMON_UNREACHABLE);
  });

  it('parses NAME=VALUE words and refuses others', () => {
    expect(keyValues(['a=1', 'b=x=y', 'c='])).toEqual({ a: '1', b: 'x=y', c: '' });
    expect(() => keyValues(['novalue'])).toThrow(/NAME=VALUE/);
    expect(() => keyValues(['=1'])).toThrow(/NAME=VALUE/);
  });

  it('reads --since as a duration back or a date', () => {
    const now = Date.parse('2026-11-22T10:00:00Z');
    expect(sinceUs('90s', now)).toBe((now - 90_000) * 1000);
    expect(sinceUs('2h', now)).toBe((now - 7_200_000) * 1000);
    expect(sinceUs('2026-11-21T00:00:00Z', now)).toBe(Date.parse('2026-11-21T00:00:00Z') * 1000);
    expect(() => sinceUs('yesterday-ish', now)).toThrow(/duration/);
  });

  it('prints an event as JSON with its payload parsed, and a one-line summary', () => {
    const j = eventJson({
      id: 3,
      vm: 'web1',
      plugin: 'signal',
      event: 'signal',
      payloadJson: '{"signal":{"sig":11,"target":{"comm":"demo"}},"monoNs":5}',
    });
    expect(j['payload']).toEqual({ signal: { sig: 11, target: { comm: 'demo' } }, monoNs: 5 });
    expect(summaryOf(j)).toBe('signal.sig=11 signal.target.comm=demo');
  });
});
