// Reading the agent channel's socket path from domain XML, on XML libvirt 9.0 produced on this
// project's host (live XML of a running domain: aliases, addresses, state attributes, and paths
// libvirt generated), and building the device XML for hot-plug.
import { describe, expect, it } from 'vitest';
import { AGENT_CHANNEL, channelDeviceXml, channelSocketPath } from '../../host/libvirt/channel.js';

// `virsh dumpxml` of a running domain, trimmed to the parts around the channels.
const LIVE_XML = `<domain type='qemu' id='3'>
  <name>vsp-probe</name>
  <uuid>9037dd48-7fee-4393-ba03-fe8746808909</uuid>
  <memory unit='KiB'>65536</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='virtio-serial' index='0'>
      <alias name='virtio-serial0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </controller>
    <serial type='file'>
      <source path='/tmp/vsp-probe/console.log'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/tmp/vsp-probe/agent.sock'/>
      <target type='virtio' name='org.vesper.agent.0' state='disconnected'/>
      <alias name='channel0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-4-vsp-probe/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
      <alias name='channel1'/>
      <address type='virtio-serial' controller='0' bus='0' port='2'/>
    </channel>
    <panic model='isa'/>
  </devices>
</domain>
`;

// The persistent XML of a domain whose channel left the path to libvirt: no source yet.
const INACTIVE_XML = `<domain type='qemu'>
  <name>vsp-probe</name>
  <devices>
    <channel type='unix'>
      <target type='virtio' name='org.vesper.agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
  </devices>
</domain>`;

describe('channelSocketPath', () => {
  it('finds the agent channel (the default name) and other channels by name', () => {
    expect(channelSocketPath(LIVE_XML)).toBe('/tmp/vsp-probe/agent.sock');
    expect(channelSocketPath(LIVE_XML, AGENT_CHANNEL)).toBe('/tmp/vsp-probe/agent.sock');
    expect(channelSocketPath(LIVE_XML, 'org.qemu.guest_agent.0')).toBe(
      '/var/lib/libvirt/qemu/channel/target/domain-4-vsp-probe/org.qemu.guest_agent.0',
    );
  });

  it('is null for an absent channel, a channel without a path yet, or one where QEMU connects', () => {
    expect(channelSocketPath(LIVE_XML, 'org.vesper.test.0')).toBeNull();
    expect(channelSocketPath(INACTIVE_XML)).toBeNull();
    expect(channelSocketPath(LIVE_XML.replace("mode='bind' path='/tmp", "mode='connect' path='/tmp"))).toBeNull();
    expect(
      channelSocketPath(
        LIVE_XML.replace("<target type='virtio' name='org.vesper.agent.0'", "<target type='guestfwd' name='org.vesper.agent.0'"),
      ),
    ).toBeNull();
  });

  it('does not care about quoting, attribute order or a single channel, and decodes entities', () => {
    const xml = `<?xml version="1.0"?>
<domain type="kvm"><devices><channel type="unix"><target name="org.vesper.agent.0" type="virtio"/><source path="/run/a&amp;b &apos;x&apos;.sock" mode="bind"/></channel></devices></domain>`;
    expect(channelSocketPath(xml)).toBe("/run/a&b 'x'.sock");
  });

  it('is null, never an exception, for malformed or foreign input', () => {
    for (const bad of ['', '<domain', 'not xml at all', '<foo><devices/></foo>', '<domain><devices>text</devices></domain>', '<domain/>']) {
      expect(channelSocketPath(bad)).toBeNull();
    }
  });
});

describe('channelDeviceXml', () => {
  it('builds a listening virtio channel that channelSocketPath reads back', () => {
    const dev = channelDeviceXml('/tmp/vesper-lv-x/test.sock', 'org.vesper.test.0');
    expect(dev).toBe(
      "<channel type='unix'><source mode='bind' path='/tmp/vesper-lv-x/test.sock'/><target type='virtio' name='org.vesper.test.0'/></channel>",
    );
    expect(channelSocketPath(`<domain><devices>${dev}</devices></domain>`, 'org.vesper.test.0')).toBe('/tmp/vesper-lv-x/test.sock');
  });

  it('escapes what XML attributes cannot hold', () => {
    const path = `/tmp/it's <a> "b" & c.sock`;
    const dev = channelDeviceXml(path, 'n');
    expect(dev).toContain('&apos;s &lt;a&gt; &quot;b&quot; &amp; c.sock');
    expect(channelSocketPath(`<domain><devices>${dev}</devices></domain>`, 'n')).toBe(path);
  });
});
