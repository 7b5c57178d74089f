// A vesper test guest as a Pacemaker resource (ocf:heartbeat:VirtualDomain), the polling
// baseline vesper's event-driven detection is compared with: the domain XML the agent starts
// with `virsh create`, a monitor script that asks the guest whether its demo service runs, and
// the CIB primitive with a 10 s monitor.
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { projectRoot } from '../../helpers/project-root.js';
import type { Accel } from '../vm/domain.js';
import type { VmRig } from '../vm/rig.js';

export const CHECK_GUEST_SERVICE = 'test/rigs/pacemaker/check-guest-service.mjs';

export interface VirtualDomainFiles {
  /** the domain XML, for VirtualDomain's `config` */
  configXml: string;
  /** executable, no arguments: for VirtualDomain's `monitor_scripts` */
  monitorScript: string;
}

export interface VirtualDomainPrimitiveOptions {
  id: string;
  configXml: string;
  monitorScript: string;
  /** libvirt URI; default qemu:///system (what VmRig and root's virsh use) */
  hypervisor?: string;
  /** default 10 */
  monitorIntervalS?: number;
}

// The agent uses config and monitor_scripts unquoted in its shell (`virsh create ${config}`,
// `for script in ${monitor_scripts}`), so a path with a space or glob character would break
// there, much later and far less clearly than here.
const SHELL_SAFE_PATH = /^\/[A-Za-z0-9._/+@-]+$/;

function shellSafePath(what: string, p: string): string {
  if (!SHELL_SAFE_PATH.test(p)) throw new Error(`${what} ${JSON.stringify(p)} must be absolute and free of spaces and shell characters`);
  return p;
}

const shQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

const xmlAttr = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

/**
 * Writes `<dir>/<rig.name>.xml` (the domain as VmRig defines it) and
 * `<dir>/<rig.name>-check-svc` (runs check-guest-service.mjs on the rig's test socket).
 * The rig must be prepared (its image built) and must have the test helpers; it must NOT have
 * booted the domain itself: VirtualDomain's start undefines a domain of that name and creates
 * its own transient one from this file.
 */
export function writeVirtualDomainFiles(rig: VmRig, dir: string): VirtualDomainFiles {
  if (!rig.image) throw new Error('writeVirtualDomainFiles: call rig.prepare() first (the XML names the image)');
  if (rig.opts.testHelpers === false) throw new Error('writeVirtualDomainFiles: the rig has no test port to ask the guest through');
  const abs = resolve(dir);
  const configXml = shellSafePath('config path', join(abs, `${rig.name}.xml`));
  const monitorScript = shellSafePath('monitor script path', join(abs, `${rig.name}-check-svc`));
  mkdirSync(abs, { recursive: true });

  // Before a boot the rig's accel is its default, TCG, unless the rig was told which one to use.
  const accel: Accel = rig.opts.accel && rig.opts.accel !== 'auto' ? rig.opts.accel : rig.accel;
  const xml = rig.domainXml(accel);
  writeFileSync(configXml, xml, { mode: 0o644 });

  // execd gives monitor scripts a bare PATH: node and the script by absolute path.
  const check = join(projectRoot(), CHECK_GUEST_SERVICE);
  writeFileSync(monitorScript, `#!/bin/sh\nexec ${shQuote(process.execPath)} ${shQuote(check)} ${shQuote(rig.testSocket)}\n`);
  chmodSync(monitorScript, 0o755);
  return { configXml, monitorScript };
}

/**
 * The CIB `<primitive>` for the guest: VirtualDomain with the monitor script, force_stop (stop
 * is `virsh destroy` at once, no ACPI shutdown the test guest would ignore) and timeouts for a
 * TCG guest. start includes the boot: the agent's start loops on monitor, monitor scripts
 * included, until the guest's demo service answers.
 */
export function virtualDomainPrimitiveXml(opts: VirtualDomainPrimitiveOptions): string {
  const { id } = opts;
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*$/.test(id)) throw new Error(`resource id ${JSON.stringify(id)} is not a valid XML id`);
  const interval = opts.monitorIntervalS ?? 10;
  if (!Number.isInteger(interval) || interval <= 0) throw new Error(`monitorIntervalS must be a positive integer, not ${interval}`);
  shellSafePath('config path', opts.configXml);
  shellSafePath('monitor script path', opts.monitorScript);
  const params: Array<[string, string]> = [
    ['config', opts.configXml],
    ['hypervisor', opts.hypervisor ?? 'qemu:///system'],
    ['force_stop', 'true'],
    ['monitor_scripts', opts.monitorScript],
  ];
  const ops: Array<[name: string, intervalS: number, timeoutS: number]> = [
    ['start', 0, 120],
    ['stop', 0, 60],
    ['monitor', interval, 30],
  ];
  const ia = `${id}-instance_attributes`;
  return [
    `<primitive id="${id}" class="ocf" provider="heartbeat" type="VirtualDomain">`,
    `  <instance_attributes id="${ia}">`,
    ...params.map(([n, v]) => `    <nvpair id="${ia}-${n}" name="${n}" value="${xmlAttr(v)}"/>`),
    '  </instance_attributes>',
    '  <operations>',
    ...ops.map(([n, i, t]) => `    <op id="${id}-${n}-interval-${i}s" name="${n}" interval="${i}s" timeout="${t}s"/>`),
    '  </operations>',
    '</primitive>',
  ].join('\n');
}
