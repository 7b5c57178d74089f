// The libvirt domain of a vesper guest: direct kernel boot of the image the builder made,
// the agent's virtio-serial channel on a unix socket the host owns, a pvpanic device and
// an i6300esb watchdog whose firing libvirt reports (action none: vesper decides), and the
// serial console in a file for post-mortems.

export type Accel = 'kvm' | 'tcg';

export interface GuestDomainSpec {
  name: string;
  accel: Accel;
  kernel: string;
  initrd: string;
  cmdline: string;
  memoryMiB?: number;
  vcpus?: number;
  consoleLog: string;
  /** virtio-serial channels: port name -> unix socket path (QEMU listens, the host connects) */
  channels: Record<string, string>;
  /** raw image files, attached as virtio disks vda, vdb, ... in this order */
  disks?: string[];
}

const esc = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

export function channelXml(port: string, socket: string): string {
  return `<channel type='unix'><source mode='bind' path='${esc(socket)}'/><target type='virtio' name='${esc(port)}'/></channel>`;
}

/**
 * A raw file as a virtio disk. cache='none' (O_DIRECT on the host): the guest's writes reach
 * the host's disk instead of stopping in its page cache, so I/O stress in the guest is real I/O.
 */
export function diskXml(file: string, index: number): string {
  const dev = `vd${String.fromCharCode(97 + index)}`;
  return `<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='${esc(file)}'/><target dev='${dev}' bus='virtio'/></disk>`;
}

export function guestDomainXml(s: GuestDomainSpec): string {
  // TCG wants "-cpu max"; under KVM the host's CPU model is passed through.
  const cpu = s.accel === 'kvm' ? `<cpu mode='host-passthrough'/>` : `<cpu mode='maximum'/>`;
  return `<domain type='${s.accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${esc(s.name)}</name>
  <memory unit='MiB'>${s.memoryMiB ?? 512}</memory>
  <vcpu>${s.vcpus ?? 1}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(s.kernel)}</kernel>
    <initrd>${esc(s.initrd)}</initrd>
    <cmdline>${esc(s.cmdline)}</cmdline>
  </os>
  ${cpu}
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='${esc(s.consoleLog)}'/><target port='0'/></serial>
    <!-- Always there, so that a channel can be hot-plugged into a guest defined without one. -->
    <controller type='virtio-serial' index='0'/>
    ${Object.entries(s.channels)
      .map(([port, sock]) => channelXml(port, sock))
      .join('\n    ')}
    ${(s.disks ?? []).map(diskXml).join('\n    ')}
    <panic model='isa'><address type='isa' iobase='0x505'/></panic>
    <watchdog model='i6300esb' action='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}
