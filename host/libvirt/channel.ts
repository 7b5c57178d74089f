// The agent link is a virtio-serial channel that QEMU exposes on the host as a unix socket:
//
//   <channel type='unix'>
//     <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/vm1.org.vesper.agent.0'/>
//     <target type='virtio' name='org.vesper.agent.0'/>
//   </channel>
//
// mode='bind' means QEMU listens and the host connects. When the definition leaves the path out,
// libvirt generates one, so read it from the live XML of the running domain.
//
// The XML comes from libvirt, but is parsed with a real parser (fast-xml-parser) rather than
// regular expressions: attribute order, quoting style and entities (&amp; in a path) all vary.
import { XMLParser } from 'fast-xml-parser';
import { escapeXml } from './xml-text.js';

export const AGENT_CHANNEL = 'org.vesper.agent.0';

type Attrs = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseAttributeValue: false, // paths and names stay strings
  parseTagValue: false,
  isArray: (tag) => tag === 'channel' || tag === 'devices',
});

function attr(node: unknown, name: string): string | undefined {
  const v = node && typeof node === 'object' ? (node as Attrs)[`@_${name}`] : undefined;
  return typeof v === 'string' ? v : undefined;
}

function child(node: unknown, name: string): unknown {
  return node && typeof node === 'object' ? (node as Attrs)[name] : undefined;
}

/**
 * The host-side socket path of the unix channel `name` in a domain's XML, or null when the
 * domain has no such channel (or it is not a listening virtio channel with a path).
 * Never throws: malformed XML also gives null.
 */
export function channelSocketPath(domainXml: string, name: string = AGENT_CHANNEL): string | null {
  for (const dev of devicesOf(domainXml) ?? []) {
    const channels = child(dev, 'channel');
    for (const ch of Array.isArray(channels) ? channels : []) {
      const source = child(ch, 'source');
      const target = child(ch, 'target');
      if (attr(ch, 'type') !== 'unix' || attr(target, 'type') !== 'virtio' || attr(target, 'name') !== name) continue;
      if (attr(source, 'mode') !== 'bind') continue; // QEMU would connect to us, nothing to dial
      const path = attr(source, 'path');
      if (path) return path;
    }
  }
  return null;
}

/** Device XML for `virsh attach-device` / `detach-device`: a listening unix channel. */
export function channelDeviceXml(path: string, name: string): string {
  return `<channel type='unix'><source mode='bind' path='${escapeXml(path)}'/><target type='virtio' name='${escapeXml(name)}'/></channel>`;
}

/** A unix channel as it stands in a domain's XML. */
export interface ChannelInXml {
  /** the source path, when the XML has one (libvirt fills it in for a running domain) */
  path: string | null;
  mode: string | null;
}

function devicesOf(domainXml: string): unknown[] | null {
  let doc: unknown;
  try {
    doc = parser.parse(domainXml);
  } catch {
    return null;
  }
  const devices = child(child(doc, 'domain'), 'devices');
  return Array.isArray(devices) ? devices : null;
}

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? v : v === undefined ? [] : [v];
}

/** The virtio channel named `name` in a domain's XML (any source type), or null. */
export function findChannel(domainXml: string, name: string = AGENT_CHANNEL): ChannelInXml | null {
  for (const dev of devicesOf(domainXml) ?? []) {
    for (const ch of asArray(child(dev, 'channel'))) {
      const target = child(ch, 'target');
      if (attr(target, 'type') !== 'virtio' || attr(target, 'name') !== name) continue;
      const source = child(ch, 'source');
      return { path: attr(source, 'path') ?? null, mode: attr(source, 'mode') ?? null };
    }
  }
  return null;
}

/** Whether the domain's XML has a virtio-serial controller (the bus a virtio channel sits on). */
export function hasVirtioSerialController(domainXml: string): boolean {
  for (const dev of devicesOf(domainXml) ?? []) {
    for (const c of asArray(child(dev, 'controller'))) if (attr(c, 'type') === 'virtio-serial') return true;
  }
  return false;
}

/** Device XML for a listening unix channel whose path libvirt chooses (under its channel directory). */
export function channelDeviceXmlAutoPath(name: string = AGENT_CHANNEL): string {
  return `<channel type='unix'><source mode='bind'/><target type='virtio' name='${escapeXml(name)}'/></channel>`;
}

/** Device XML of a virtio-serial controller, for a domain that has none. */
export const VIRTIO_SERIAL_CONTROLLER_XML = "<controller type='virtio-serial'/>";
