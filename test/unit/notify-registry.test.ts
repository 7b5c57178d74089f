import { describe, expect, it } from 'vitest';
import { CHANNEL_PLUGIN, HOST_PLUGINS, LIBVIRT_PLUGIN, hostPluginSpec } from '../../host/notify/host-plugins.js';
import { PluginRegistry, type Plugin, type PluginSpec } from '../../host/notify/registry.js';
import { ErrorCode } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';

const probe = (vm: string, name = 'signal', extra: Partial<PluginSpec> = {}): PluginSpec => ({
  vm,
  name,
  kind: 'probe',
  events: [{ name: 'fatal', description: 'a fatal signal' }],
  params: [{ name: 'signals', type: 'list', default: 'SEGV,BUS' }],
  instances: 2,
  ...extra,
});

function recorder(r: PluginRegistry): string[] {
  const log: string[] = [];
  r.on('registered', (p: Plugin) => log.push(`+${p.vm}/${p.name}#${p.handle}`));
  r.on('unregistered', (p: Plugin) => log.push(`-${p.vm}/${p.name}#${p.handle}`));
  return log;
}

describe('PluginRegistry lifecycle', () => {
  it('register hands back a handle; get, has and list find the plugin', () => {
    const r = new PluginRegistry();
    const log = recorder(r);
    const h = r.register(probe('vm1'));
    expect(typeof h).toBe('number');
    const p = r.get('vm1', 'signal');
    expect(p).toMatchObject({ handle: h, vm: 'vm1', name: 'signal', kind: 'probe', instances: 2 });
    expect(p!.events.map((e) => e.name)).toEqual(['fatal']);
    expect(r.has('vm1', 'signal')).toBe(true);
    expect(r.has('vm2', 'signal')).toBe(false);
    expect(r.has('vm1', 'oom')).toBe(false);
    expect(r.byHandleOf(h)).toBe(p);
    expect(log).toEqual([`+vm1/signal#${h}`]);
  });

  it('refuses the same (vm, name) twice; the same name on another VM or host-wide is another plugin', () => {
    const r = new PluginRegistry();
    const h = r.register(probe('vm1'));
    const e = caught(() => r.register(probe('vm1', 'signal', { instances: 1 })));
    expect(e.code).toBe(ErrorCode.PROBE_ALREADY_LOADED);
    expect(e.message).toBe(`plugin signal is already registered for vm "vm1" (handle ${h}); unregister it first`);
    r.register(hostPluginSpec(LIBVIRT_PLUGIN, 'vm1'));
    const e2 = caught(() => r.register(hostPluginSpec(LIBVIRT_PLUGIN, 'vm1')));
    expect(e2.code).toBe(ErrorCode.INTERNAL);
    expect(e2.message).toContain('plugin libvirt is already registered for vm "vm1"');
    r.register(probe('vm2'));
    r.register(probe(''));
    expect(r.size).toBe(4);
    expect(r.get('vm1', 'signal')!.instances).toBe(2); // the first one stayed
  });

  it('unregister removes the plugin once; after it the name may be registered again, with a new handle', () => {
    const r = new PluginRegistry();
    const log = recorder(r);
    const h1 = r.register(probe('vm1'));
    expect(r.unregister(h1)).toBe(true);
    expect(r.unregister(h1)).toBe(false);
    expect(r.get('vm1', 'signal')).toBeUndefined();
    expect(r.has('vm1', 'signal')).toBe(false);
    expect(r.list()).toEqual([]);
    const h2 = r.register(probe('vm1', 'signal', { instances: 1 }));
    expect(h2).not.toBe(h1);
    expect(r.get('vm1', 'signal')!.instances).toBe(1);
    // A stale handle cannot remove the new registration.
    expect(r.unregister(h1)).toBe(false);
    expect(r.has('vm1', 'signal')).toBe(true);
    expect(log).toEqual([`+vm1/signal#${h1}`, `-vm1/signal#${h1}`, `+vm1/signal#${h2}`]);
  });

  it('list() gives everything in registration order; list(vm) one VM, with "" the host-wide plugins', () => {
    const r = new PluginRegistry();
    r.register(probe('vm1', 'signal'));
    r.register(probe('vm2', 'signal'));
    r.register(probe('vm1', 'oom'));
    r.register(hostPluginSpec(CHANNEL_PLUGIN, ''));
    expect(r.list().map((p) => `${p.vm}/${p.name}`)).toEqual(['vm1/signal', 'vm2/signal', 'vm1/oom', '/channel']);
    expect(r.list('vm1').map((p) => p.name)).toEqual(['signal', 'oom']);
    expect(r.list('').map((p) => p.name)).toEqual(['channel']);
    expect(r.list('vm9')).toEqual([]);
  });

  it('unregisterVm removes every plugin of a VM that disappeared, telling each', () => {
    const r = new PluginRegistry();
    r.register(probe('vm1', 'signal'));
    r.register(probe('vm1', 'oom'));
    r.register(probe('vm2', 'oom'));
    const log = recorder(r);
    expect(r.unregisterVm('vm1')).toBe(2);
    expect(r.unregisterVm('vm1')).toBe(0);
    expect(log.map((l) => l.replace(/#\d+$/, ''))).toEqual(['-vm1/signal', '-vm1/oom']);
    expect(r.list().map((p) => `${p.vm}/${p.name}`)).toEqual(['vm2/oom']);
  });

  it('keeps a frozen copy of the spec: changing the caller’s object later changes nothing', () => {
    const r = new PluginRegistry();
    const spec = probe('vm1');
    r.register(spec);
    spec.events.push({ name: 'extra' });
    spec.params[0]!.default = 'ILL';
    spec.instances = 9;
    const p = r.get('vm1', 'signal')!;
    expect(p.events.map((e) => e.name)).toEqual(['fatal']);
    expect(p.params[0]!.default).toBe('SEGV,BUS');
    expect(p.instances).toBe(2);
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p.params[0])).toBe(true);
  });
});

describe('PluginRegistry refuses malformed specs', () => {
  const cases: Array<[Partial<PluginSpec>, string]> = [
    [{ name: '' }, 'plugin name is empty'],
    [{ name: '*' }, "plugin name may not be '*'"],
    [{ name: 'a b' }, 'plugin name "a b" is not a name'],
    [{ vm: '*' }, 'vm "*" is not a VM name'],
    [{ instances: 0 }, 'instances 0 is not an integer from 1 to 65536'],
    [{ instances: 1.5 }, 'instances 1.5 is not an integer'],
    [{ events: [{ name: 'x' }, { name: 'x' }] }, 'event x is listed twice'],
    [{ events: [{ name: 'sig*' }] }, `event name "sig*" contains '*'`],
    [{ params: [{ name: 'p', type: 'float' as 'int' }] }, 'parameter p has type "float", not one of string, int, bool, list, duration'],
    [{ params: [{ name: 'p', type: 'int', default: 'many' }] }, 'default of parameter p="many" is not an integer'],
    [{ params: [{ name: 'p', type: 'duration', default: '5h' }] }, 'default of parameter p="5h" is not a duration'],
    [
      {
        params: [
          { name: 'p', type: 'bool' },
          { name: 'p', type: 'int' },
        ],
      },
      'parameter p is listed twice',
    ],
  ];
  for (const [patch, msg] of cases)
    it(`${JSON.stringify(patch)} → ${msg}`, () => {
      const r = new PluginRegistry();
      const e = caught(() => r.register(probe('vm1', 'signal', patch)));
      expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
      expect(e.message).toContain(msg);
      expect(r.size).toBe(0);
    });

  it('a host plugin with a bad spec is a bug of the manager: INTERNAL', () => {
    const e = caught(() => new PluginRegistry().register({ ...hostPluginSpec(LIBVIRT_PLUGIN, 'vm1'), instances: 0 }));
    expect(e.code).toBe(ErrorCode.INTERNAL);
  });

  it('a refused registration uses up no handle', () => {
    const r = new PluginRegistry();
    const h1 = r.register(probe('vm1'));
    caught(() => r.register(probe('vm1')));
    caught(() => r.register(probe('vm2', '')));
    expect(r.register(probe('vm2'))).toBe(h1 + 1);
  });
});

describe('host plugins', () => {
  it('describe libvirt and channel with their event lists, and register for any VM', () => {
    expect(HOST_PLUGINS.map((p) => p.name)).toEqual(['libvirt', 'channel']);
    expect(LIBVIRT_PLUGIN.events.map((e) => e.name)).toEqual([
      'started',
      'stopped',
      'crashed',
      'panicked',
      'shutdown',
      'rebooted',
      'watchdog',
      'io-error',
      'suspended',
      'resumed',
      'other',
    ]);
    expect(CHANNEL_PLUGIN.events.map((e) => e.name)).toEqual([
      'agent-connected',
      'agent-lost',
      'agent-back',
      'heartbeat-lost',
      'heartbeat-back',
      'records-lost',
      'agent-stopping',
      'watch-held',
      'watch-resumed',
    ]);
    const r = new PluginRegistry();
    for (const vm of ['vm1', 'vm2', '']) for (const p of HOST_PLUGINS) r.register(hostPluginSpec(p, vm));
    expect(r.size).toBe(6);
    const ch = r.get('vm2', 'channel')!;
    expect(ch).toMatchObject({ kind: 'host', instances: 1 });
    expect(ch.params.map((p) => p.name)).toEqual(['heartbeat_misses', 'keepalive', 'reconnect_min', 'reconnect_max']);
  });
});
