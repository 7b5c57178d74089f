// `vesper channel add|remove` (host/cli/channel.ts) against a fake libvirt that keeps a live and
// a persistent XML and applies attach/detach to them the way libvirt does (matching a channel
// to detach by type, target and source path). Which scopes change, the controller added first,
// idempotence, and the refusals. The real libvirtd is in test/acceptance/channel-verb.test.ts.
import { describe, expect, it } from 'vitest';
import { addChannel, removeChannel, type ChannelHypervisor } from '../../host/cli/channel.js';
import { findChannel, hasVirtioSerialController } from '../../host/libvirt/channel.js';
import type { DeviceChangeOptions } from '../../host/libvirt/hypervisor.js';

const domain = (devices: string): string => `<domain type='kvm'><name>vm1</name><devices>${devices}</devices></domain>`;
const QGA = "<channel type='unix'><source mode='bind' path='/x/qga'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";
const CONTROLLER = "<controller type='virtio-serial' index='0'/>";

class FakeLibvirt implements ChannelHypervisor {
  calls: string[] = [];
  constructor(
    public live: string | null,
    public config: string | null,
    readonly refuse: RegExp | null = null,
  ) {}
  async state() {
    return { state: this.live ? 'running' : 'shut off', reason: '' };
  }
  async xml() {
    return this.live ?? this.config ?? '';
  }
  async inactiveXml() {
    return this.config;
  }
  private apply(xml: string, o: DeviceChangeOptions, f: (doc: string) => string): void {
    if (this.refuse?.test(xml)) throw Object.assign(new Error('libvirt: operation not supported'), { code: 'VSP_LIBVIRT_CALL' });
    if (o.live) this.live = f(this.live!);
    if (o.config) this.config = f(this.config!);
  }
  async attachDevice(_n: string, xml: string, o: DeviceChangeOptions) {
    this.calls.push(`attach ${o.live ? 'live' : 'config'} ${xml.startsWith('<controller') ? 'controller' : 'channel'}`);
    // libvirt fills in the path of a live unix channel; the persistent one keeps none
    const dev = o.live
      ? xml.replace(
          "<source mode='bind'/>",
          "<source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-1-vm1/org.vesper.agent.0'/>",
        )
      : xml;
    this.apply(xml, o, (d) => d.replace('</devices>', `${dev}</devices>`));
  }
  async detachDevice(_n: string, xml: string, o: DeviceChangeOptions) {
    this.calls.push(`detach ${o.live ? 'live' : 'config'}`);
    this.apply(xml, o, (d) => {
      if (!d.includes(xml)) throw new Error(`no matching device: ${xml}`);
      return d.replace(xml, '');
    });
  }
}

describe('vesper channel add', () => {
  it('running and persistent: both, a controller first where there is none, the live socket reported', async () => {
    const hv = new FakeLibvirt(domain(''), domain(''));
    const r = await addChannel(hv, 'vm1');
    expect(r.map((x) => [x.scope, x.outcome, x.controllerAdded])).toEqual([
      ['live', 'added', true],
      ['config', 'added', true],
    ]);
    expect(r[0]!.socket).toBe('/var/lib/libvirt/qemu/channel/target/domain-1-vm1/org.vesper.agent.0');
    expect(hv.calls).toEqual(['attach live controller', 'attach live channel', 'attach config controller', 'attach config channel']);
    expect(hasVirtioSerialController(hv.live!) && hasVirtioSerialController(hv.config!)).toBe(true);
    expect(findChannel(hv.config!)).toEqual({ path: null, mode: 'bind' });
  });

  it('is idempotent: a second add changes nothing', async () => {
    const hv = new FakeLibvirt(domain(''), domain(''));
    await addChannel(hv, 'vm1');
    hv.calls = [];
    const r = await addChannel(hv, 'vm1');
    expect(r.map((x) => x.outcome)).toEqual(['present', 'present']);
    expect(hv.calls).toEqual([]);
  });

  it('uses the controller a domain has (with another channel on it)', async () => {
    const hv = new FakeLibvirt(domain(CONTROLLER + QGA), domain(CONTROLLER + QGA));
    const r = await addChannel(hv, 'vm1', { live: true });
    expect(r).toHaveLength(1);
    expect(r[0]).toMatchObject({ scope: 'live', outcome: 'added', controllerAdded: false });
    expect(findChannel(hv.config!)).toBeNull(); // --live alone leaves the definition alone
    expect(findChannel(hv.live!, 'org.qemu.guest_agent.0')).not.toBeNull();
  });

  it('a shut-off domain: the definition only; --live refused with a clear error', async () => {
    const hv = new FakeLibvirt(null, domain(''));
    expect((await addChannel(hv, 'vm1')).map((x) => x.scope)).toEqual(['config']);
    await expect(addChannel(new FakeLibvirt(null, domain('')), 'vm1', { live: true })).rejects.toMatchObject({
      code: 'VSP_LIBVIRT_CALL',
      message: expect.stringContaining('not running'),
    });
  });

  it('a transient domain: live only; --config refused', async () => {
    expect((await addChannel(new FakeLibvirt(domain(''), null), 'vm1')).map((x) => x.scope)).toEqual(['live']);
    await expect(addChannel(new FakeLibvirt(domain(''), null), 'vm1', { config: true })).rejects.toMatchObject({
      code: 'VSP_LIBVIRT_CALL',
      message: expect.stringContaining('transient'),
    });
  });

  it("libvirt's refusal is passed on", async () => {
    const hv = new FakeLibvirt(domain(CONTROLLER), domain(CONTROLLER), /org\.vesper/);
    await expect(addChannel(hv, 'vm1', { live: true })).rejects.toMatchObject({ code: 'VSP_LIBVIRT_CALL' });
  });
});

describe('vesper channel remove', () => {
  it('removes it from both with the path each has, leaves the controller, and is idempotent', async () => {
    const hv = new FakeLibvirt(domain(''), domain(''));
    await addChannel(hv, 'vm1');
    hv.calls = [];
    const r = await removeChannel(hv, 'vm1');
    expect(r.map((x) => [x.scope, x.outcome])).toEqual([
      ['live', 'removed'],
      ['config', 'removed'],
    ]);
    expect(findChannel(hv.live!)).toBeNull();
    expect(findChannel(hv.config!)).toBeNull();
    expect(hasVirtioSerialController(hv.live!)).toBe(true);
    expect((await removeChannel(hv, 'vm1')).map((x) => x.outcome)).toEqual(['absent', 'absent']);
  });

  it('a detach that libvirt accepts but that does not happen is an error after the bound', async () => {
    const hv = new FakeLibvirt(domain(''), domain(''));
    await addChannel(hv, 'vm1', { live: true });
    hv.detachDevice = async () => undefined; // the guest never releases the port
    await expect(removeChannel(hv, 'vm1', { live: true, detachTimeoutMs: 300 })).rejects.toMatchObject({
      code: 'VSP_LIBVIRT_CALL',
      message: expect.stringContaining('still has'),
    });
  });
});
