import { describe, expect, it } from 'vitest';
import type { VesperEvent } from '../../host/notify/event.js';
import { NotificationFramework, type EventSink } from '../../host/notify/framework.js';
import { CHANNEL_PLUGIN, hostPluginSpec } from '../../host/notify/host-plugins.js';
import { EventQueue } from '../../host/notify/queue.js';
import type { PluginSpec } from '../../host/notify/registry.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

let seq = 0;
const ev = (plugin: string, event: string, vm = 'vm1', instance = 0): VesperEvent => ({
  vm,
  plugin,
  instance,
  event,
  guestTimeUs: 1,
  hostTimeUs: 2,
  source: { agentRun: 'boot/1', seq: ++seq },
  payload: {},
});

/** Keeps a guest record once, as the real store does (by agent run and sequence number). */
class MemoryStore implements EventSink {
  calls: VesperEvent[][] = [];
  rows: VesperEvent[] = [];
  private seen = new Set<string>();
  append(events: VesperEvent[]): { stored: VesperEvent[]; duplicates: number } {
    this.calls.push([...events]);
    const stored: VesperEvent[] = [];
    for (const e of events) {
      const key = e.source ? `${e.source.agentRun}/${e.source.seq}` : null;
      if (key !== null && this.seen.has(key)) continue;
      if (key !== null) this.seen.add(key);
      e.id = this.rows.push({ ...e });
      stored.push(e);
    }
    return { stored, duplicates: events.length - stored.length };
  }
}

class Actions {
  runs: string[] = [];
  failOn = new Set<string>();
  run(e: VesperEvent, action: string, args: string[]): void {
    this.runs.push(`${action}(${args.join(',')}) ${e.plugin}/${e.event}`);
    if (this.failOn.has(action)) throw new Error(`${action} failed`);
  }
}

function setup(opts: { store?: boolean; actions?: boolean } = {}) {
  const store = new MemoryStore();
  const actions = new Actions();
  const fw = new NotificationFramework({
    ...(opts.store === false ? {} : { store }),
    ...(opts.actions === false ? {} : { actions }),
  });
  fw.filters.set({ vm: '*', plugin: 'process', instance: '*', event: '*', decision: { kind: 'discard' } });
  fw.filters.set({
    vm: '*',
    plugin: 'oom',
    instance: '*',
    event: 'kill',
    decision: { kind: 'action', action: 'restart', args: ['--soft'] },
  });
  fw.filters.set({ vm: 'vm2', plugin: '*', instance: '*', event: '*', decision: { kind: 'action', action: 'page', args: [] } });
  const sub = fw.queue.subscribe();
  return { fw, store, actions, sub };
}

const names = (events: VesperEvent[]): string[] => events.map((e) => `${e.vm}:${e.plugin}/${e.event}`);

describe('NotificationFramework.ingest', () => {
  it('sets every disposition by the filter, stores all (discarded too) in one call, publishes notify and action ones', () => {
    const { fw, store, actions, sub } = setup();
    const batch = [ev('signal', 'fatal'), ev('process', 'exit'), ev('oom', 'kill'), ev('oom', 'pressure'), ev('process', 'exec', 'vm2')];
    expect(fw.ingest(batch)).toEqual({ stored: 5, duplicates: 0 });
    expect(batch.map((e) => e.disposition)).toEqual(['notify', 'discard', 'action', 'notify', 'action']);
    expect(store.calls).toHaveLength(1);
    expect(store.calls[0]).toEqual(batch);
    expect(store.rows.map((r) => r.disposition)).toEqual(['notify', 'discard', 'action', 'notify', 'action']);
    expect(names(sub.take().events)).toEqual(['vm1:signal/fatal', 'vm1:oom/kill', 'vm1:oom/pressure', 'vm2:process/exec']);
    expect(actions.runs).toEqual(['restart(--soft) oom/kill', 'page() process/exec']);
    expect(fw.counters()).toEqual({
      ingested: 5,
      stored: 5,
      duplicates: 0,
      discarded: 1,
      notified: 4,
      actionsRun: 2,
      actionFailures: 0,
      unregisteredPlugin: 5,
      storeFailures: 0,
    });
  });

  it('makes one store call per ingest, however large the batch', () => {
    const { fw, store } = setup();
    for (let i = 0; i < 3; i++) fw.ingest(Array.from({ length: 1000 }, () => ev('signal', 'fatal')));
    expect(store.calls.map((c) => c.length)).toEqual([1000, 1000, 1000]);
  });

  it('does not publish, or act on, events the store already had', () => {
    const { fw, store, actions, sub } = setup();
    const batch = [ev('signal', 'fatal'), ev('oom', 'kill'), ev('process', 'exit')];
    fw.ingest(batch);
    expect(sub.take().events).toHaveLength(2);
    // The agent resends the same records (a link broke before the ack), with one new one.
    const resent = [...batch.map((e) => ({ ...e })), ev('signal', 'fatal')];
    expect(fw.ingest(resent)).toEqual({ stored: 1, duplicates: 3 });
    expect(store.calls).toHaveLength(2);
    expect(store.calls[1]).toHaveLength(4);
    const again = sub.take().events;
    expect(again).toHaveLength(1);
    expect(again[0]).toBe(resent[3]);
    expect(actions.runs).toEqual(['restart(--soft) oom/kill']);
    expect(fw.counters()).toMatchObject({ ingested: 7, stored: 4, duplicates: 3, notified: 3, discarded: 1, actionsRun: 1 });
  });

  it('an action that throws is counted, not thrown into ingest, and the rest of the batch goes on', () => {
    const { fw, actions, sub } = setup();
    actions.failOn.add('restart');
    const batch = [ev('oom', 'kill'), ev('signal', 'fatal', 'vm2'), ev('oom', 'kill')];
    expect(() => fw.ingest(batch)).not.toThrow();
    expect(actions.runs).toEqual(['restart(--soft) oom/kill', 'page() signal/fatal', 'restart(--soft) oom/kill']);
    expect(sub.take().events).toEqual(batch); // still told to subscribers
    expect(fw.counters()).toMatchObject({ actionsRun: 1, actionFailures: 2, notified: 3 });
  });

  it('an async action that rejects is counted as a failure when it does', async () => {
    const fw = new NotificationFramework({ actions: { run: () => Promise.reject(new Error('later')) as unknown as void } });
    fw.filters.set({ vm: '*', plugin: '*', instance: '*', event: '*', decision: { kind: 'action', action: 'x', args: [] } });
    fw.ingest([ev('signal', 'fatal')]);
    await new Promise((r) => setImmediate(r));
    expect(fw.counters()).toMatchObject({ actionsRun: 1, actionFailures: 1 });
  });

  it('without an action runner, action events are published and the action counted as failed', () => {
    const { fw, sub } = setup({ actions: false });
    fw.ingest([ev('oom', 'kill')]);
    expect(sub.take().events).toHaveLength(1);
    expect(fw.counters()).toMatchObject({ actionsRun: 0, actionFailures: 1 });
  });

  it('accepts events of unregistered plugins and counts them', () => {
    const { fw, sub } = setup();
    fw.registry.register({ vm: 'vm1', name: 'signal', kind: 'probe', events: [{ name: 'fatal' }], params: [], instances: 1 });
    fw.registry.register(hostPluginSpec(CHANNEL_PLUGIN, ''));
    fw.ingest([
      ev('signal', 'fatal'),
      ev('signal', 'fatal'),
      ev('signal', 'fatal', 'vm2'),
      ev('oom', 'pressure'),
      ev('channel', 'agent-lost', ''),
      ev('signal', 'fatal'),
    ]);
    expect(sub.take().events).toHaveLength(6);
    expect(fw.counters().unregisteredPlugin).toBe(2);
  });

  it('when the store throws, ingest throws and nothing of the batch is published', () => {
    const store: EventSink = {
      append: () => {
        throw new VesperError(ErrorCode.STORE_FAILED, 'disk full');
      },
    };
    const actions = new Actions();
    const fw = new NotificationFramework({ store, actions });
    const sub = fw.queue.subscribe();
    expect(() => fw.ingest([ev('signal', 'fatal')])).toThrow('disk full');
    expect(sub.take().events).toEqual([]);
    expect(actions.runs).toEqual([]);
    expect(fw.counters()).toMatchObject({ ingested: 1, stored: 0, notified: 0, storeFailures: 1 });
  });

  it('without a store, every event counts as new', () => {
    const { fw, sub } = setup({ store: false });
    const e = ev('signal', 'fatal');
    expect(fw.ingest([e, e])).toEqual({ stored: 2, duplicates: 0 });
    expect(sub.take().events).toEqual([e, e]);
  });

  it('uses the queue it was given', () => {
    const queue = new EventQueue({ capacity: 2 });
    const fw = new NotificationFramework({ queue });
    const sub = queue.subscribe();
    fw.ingest([ev('a', 'x'), ev('a', 'y'), ev('a', 'z')]);
    expect(sub.take()).toMatchObject({ missed: 1 });
  });

  it('ingest throughput with a no-op store (logged, not asserted)', () => {
    const fw = new NotificationFramework({
      store: { append: (events) => ({ stored: events, duplicates: 0 }) },
      actions: { run: () => {} },
      queue: new EventQueue(),
    });
    for (const vm of ['vm1', 'vm2', 'vm3', 'vm4']) {
      for (const p of ['signal', 'oom', 'process'])
        fw.registry.register({ vm, name: p, kind: 'probe', events: [], params: [], instances: 4 });
    }
    fw.filters.set({ vm: '*', plugin: 'process', instance: '*', event: '*', decision: { kind: 'discard' } });
    fw.filters.set({ vm: 'vm2', plugin: 'oom', instance: '*', event: 'kill', decision: { kind: 'action', action: 'restart', args: [] } });
    fw.filters.set({ vm: '*', plugin: 'signal', instance: 1, event: '*', decision: { kind: 'discard' } });
    const batchSize = 1000;
    const batches = Array.from({ length: 20 }, (_, b) =>
      Array.from({ length: batchSize }, (_, i) => {
        const k = b * batchSize + i;
        return ev(['signal', 'oom', 'process'][k % 3]!, k % 7 === 0 ? 'kill' : 'fatal', `vm${(b % 4) + 1}`, k % 4);
      }),
    );
    const rounds = 100;
    const t0 = performance.now();
    for (let r = 0; r < rounds; r++) for (const batch of batches) fw.ingest(batch);
    const ms = performance.now() - t0;
    const total = rounds * batches.length * batchSize;
    console.log(`notify: ingest ${total} events in ${ms.toFixed(0)} ms = ${Math.round(total / (ms / 1000)).toLocaleString('en')} events/s`);
    const c = fw.counters();
    expect(c.ingested).toBe(total);
    expect(c.stored).toBe(total);
    expect(c.discarded + c.notified).toBe(total);
    expect(c.discarded).toBeGreaterThan(0);
    expect(c.actionsRun).toBeGreaterThan(0);
    expect(c.unregisteredPlugin).toBe(0);
  });
});

describe('NotificationFramework parameters', () => {
  function withProbe() {
    const calls: string[] = [];
    const fw = new NotificationFramework();
    const spec: PluginSpec = {
      vm: 'vm1',
      name: 'kprobe',
      kind: 'probe',
      events: [{ name: 'hit' }],
      params: [
        { name: 'symbol', type: 'string', default: 'do_exit', perInstance: true },
        { name: 'max_rate', type: 'int', default: '100' },
        { name: 'fork', type: 'bool' },
        { name: 'window', type: 'duration', default: '1s', perInstance: true },
      ],
      instances: 3,
      setParams: async (instance, params) => {
        calls.push(`${instance ?? 'all'} ${JSON.stringify(params)}`);
      },
    };
    const handle = fw.registry.register(spec);
    return { fw, calls, spec, handle };
  }

  async function rejected(p: Promise<unknown>): Promise<VesperError> {
    try {
      await p;
    } catch (err) {
      expect(err).toBeInstanceOf(VesperError);
      return err as VesperError;
    }
    throw new Error('expected a rejection');
  }

  it('getParams gives the defaults before anything is set; a parameter with no default is absent', () => {
    const { fw } = withProbe();
    const v = fw.getParams('vm1', 'kprobe');
    expect(v.common).toEqual({ symbol: 'do_exit', max_rate: '100', window: '1s' });
    expect(v.instances).toEqual([v.common, v.common, v.common]);
  });

  it('sets a common or a per-instance value through the plugin, and keeps it', async () => {
    const { fw, calls } = withProbe();
    await fw.setParam('vm1', 'kprobe', null, 'max_rate', '250');
    await fw.setParam('vm1', 'kprobe', 1, 'symbol', 'oom_kill_process');
    await fw.setParam('vm1', 'kprobe', null, 'fork', 'yes');
    await fw.setParam('vm1', 'kprobe', null, 'window', '500ms');
    expect(calls).toEqual(['all {"max_rate":"250"}', '1 {"symbol":"oom_kill_process"}', 'all {"fork":"yes"}', 'all {"window":"500ms"}']);
    const v = fw.getParams('vm1', 'kprobe');
    expect(v.common).toEqual({ symbol: 'do_exit', max_rate: '250', fork: 'yes', window: '500ms' });
    expect(v.instances[0]).toEqual(v.common);
    expect(v.instances[1]).toEqual({ ...v.common, symbol: 'oom_kill_process' });
    expect(v.instances[2]).toEqual(v.common);
  });

  it('refuses an unknown plugin with PLUGIN_NOT_FOUND, naming what is there', async () => {
    const { fw, calls } = withProbe();
    const e = await rejected(fw.setParam('vm1', 'oom', null, 'x', '1'));
    expect(e.code).toBe(ErrorCode.PLUGIN_NOT_FOUND);
    expect(e.message).toBe('no plugin "oom" on vm "vm1" (registered there: kprobe)');
    const e2 = await rejected(fw.setParam('vm2', 'kprobe', null, 'max_rate', '1'));
    expect(e2.message).toBe('no plugin "kprobe" on vm "vm2" (registered there: none)');
    expect(() => fw.getParams('vm2', 'kprobe')).toThrow(VesperError);
    expect(calls).toEqual([]);
  });

  it('refuses an unknown parameter, a per-instance value for a common parameter, and a missing instance with PARAM_UNKNOWN', async () => {
    const { fw, calls } = withProbe();
    const e1 = await rejected(fw.setParam('vm1', 'kprobe', null, 'rate', '1'));
    expect(e1.code).toBe(ErrorCode.PARAM_UNKNOWN);
    expect(e1.message).toBe('plugin kprobe on vm "vm1" has no parameter "rate" (it has: symbol, max_rate, fork, window)');
    const e2 = await rejected(fw.setParam('vm1', 'kprobe', 0, 'max_rate', '1'));
    expect(e2.code).toBe(ErrorCode.PARAM_UNKNOWN);
    expect(e2.message).toBe('parameter max_rate of plugin kprobe is set for the whole plugin, not per instance (give no instance)');
    const e3 = await rejected(fw.setParam('vm1', 'kprobe', 3, 'symbol', 'x'));
    expect(e3.code).toBe(ErrorCode.PARAM_UNKNOWN);
    expect(e3.message).toBe('plugin kprobe on vm "vm1" has no instance 3 (it has instances 0 to 2)');
    expect(calls).toEqual([]);
  });

  it('refuses a value of the wrong type with PROBE_BAD_PARAM', async () => {
    const { fw, calls } = withProbe();
    for (const [name, value, msg] of [
      ['max_rate', 'lots', 'parameter max_rate="lots" is not an integer'],
      ['fork', 'maybe', 'parameter fork="maybe" is not true or false'],
      ['window', '5h', 'parameter window="5h" is not a duration such as 500ms or 2s'],
    ] as const) {
      const e = await rejected(fw.setParam('vm1', 'kprobe', null, name, value));
      expect(e.code).toBe(ErrorCode.PROBE_BAD_PARAM);
      expect(e.message).toBe(msg);
    }
    expect(calls).toEqual([]);
    expect(fw.getParams('vm1', 'kprobe').common['max_rate']).toBe('100');
  });

  it('a value the plugin rejects is not kept', async () => {
    const fw = new NotificationFramework();
    fw.registry.register({
      ...hostPluginSpec(CHANNEL_PLUGIN, 'vm1', async (_i, p) => {
        if (p['heartbeat_misses'] === '0') throw new Error('must be at least 1');
      }),
    });
    await fw.setParam('vm1', 'channel', null, 'heartbeat_misses', '5');
    await expect(fw.setParam('vm1', 'channel', null, 'heartbeat_misses', '0')).rejects.toThrow('must be at least 1');
    expect(fw.getParams('vm1', 'channel').common).toEqual({
      heartbeat_misses: '5',
      keepalive: '1000',
      reconnect_min: '200',
      reconnect_max: '5000',
    });
  });

  it('applies calls for one plugin in the order they were made', async () => {
    const fw = new NotificationFramework();
    const applied: string[] = [];
    const delays: Record<string, number> = { '1': 30, '2': 0 };
    fw.registry.register({
      vm: 'vm1',
      name: 'p',
      kind: 'probe',
      events: [],
      params: [{ name: 'n', type: 'int' }],
      instances: 1,
      setParams: (_i, p) =>
        new Promise<void>((r) =>
          setTimeout(() => {
            applied.push(p['n']!);
            r();
          }, delays[p['n']!]),
        ),
    });
    await Promise.all([fw.setParam('vm1', 'p', null, 'n', '1'), fw.setParam('vm1', 'p', null, 'n', '2')]);
    expect(applied).toEqual(['1', '2']);
    expect(fw.getParams('vm1', 'p').common).toEqual({ n: '2' });
  });

  it('values go with the registration: after unregister and register again, the defaults are back', async () => {
    const { fw, spec, handle } = withProbe();
    await fw.setParam('vm1', 'kprobe', null, 'max_rate', '7');
    fw.registry.unregister(handle);
    await expect(fw.setParam('vm1', 'kprobe', null, 'max_rate', '8')).rejects.toMatchObject({ code: ErrorCode.PLUGIN_NOT_FOUND });
    fw.registry.register(spec);
    expect(fw.getParams('vm1', 'kprobe').common['max_rate']).toBe('100');
  });
});
