// `vesper channel add|remove` (the built CLI) on a real libvirtd and a real small guest booted
// without the agent's channel: add puts the channel (and the virtio-serial controller the
// domain lacks) into the running guest and its persistent definition, the agent inside finds
// the port and answers on the socket libvirt chose; a second add changes nothing; remove takes
// it out of both and the agent's link ends.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../host/channel/agent-client.js';
import { findChannel, hasVirtioSerialController } from '../../host/libvirt/channel.js';
import { VmRig } from '../rigs/vm/rig.js';
import { waitFor } from '../helpers/wait.js';

const VESPER = join(import.meta.dirname, '..', '..', 'dist', 'host', 'vesper.mjs');
const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
if (why) console.warn(`SKIP channel verb tests: ${why}`);

interface Result {
  scope: 'live' | 'config';
  outcome: string;
  controllerAdded: boolean;
  socket: string | null;
}

function vesper(...args: string[]): { vm: string; channel: string; results: Result[] } {
  const out = execFileSync(process.execPath, [VESPER, 'channel', ...args, '--connect', 'qemu:///system', '-o', 'json'], {
    encoding: 'utf8',
    timeout: 90_000,
  });
  return JSON.parse(out) as { vm: string; channel: string; results: Result[] };
}

function virshXml(name: string, inactive: boolean): string {
  return execFileSync('virsh', ['-c', 'qemu:///system', 'dumpxml', ...(inactive ? ['--inactive'] : []), name], { encoding: 'utf8' });
}

describe.skipIf(Boolean(why))('vesper channel add|remove on a real guest', () => {
  let rig: VmRig;
  beforeAll(async () => {
    rig = new VmRig({
      testHelpers: false,
      agentChannel: false,
      onProgress: (s, d) => console.warn(`vm rig (channel verb): ${s}${d ? `: ${d}` : ''}`),
    });
    await rig.prepare();
  }, 600_000);
  afterAll(async () => {
    await rig?.stop();
  }, 120_000);

  it('adds the channel live and persistently, the agent answers; idempotent; remove ends the link', { timeout: 300_000 }, async () => {
    await rig.startOnly();
    await waitFor('guest userspace', () => rig.consoleTail(20_000).includes('agent starting'), 150_000, 200);
    expect(findChannel(virshXml(rig.name, false))).toBeNull();
    const hadController = hasVirtioSerialController(virshXml(rig.name, false));

    const added = vesper('add', rig.name);
    expect(added.results.map((r) => [r.scope, r.outcome])).toEqual([
      ['live', 'added'],
      ['config', 'added'],
    ]);
    expect(added.results[0]!.controllerAdded).toBe(!hadController);
    const socket = added.results[0]!.socket!;
    expect(socket).toMatch(/org\.vesper\.agent\.0$/);
    expect(findChannel(virshXml(rig.name, false))?.path).toBe(socket);
    expect(findChannel(virshXml(rig.name, true))).not.toBeNull();
    expect(hasVirtioSerialController(virshXml(rig.name, true))).toBe(true);

    // the agent in the guest finds the hot-plugged port and answers on libvirt's socket
    let client: AgentClient | null = null;
    await waitFor(
      'the agent on the new channel',
      async () => {
        try {
          client = await AgentClient.connectUnix(socket, { handshakeTimeoutMs: 5_000 });
          return true;
        } catch {
          return false;
        }
      },
      90_000,
      500,
    );
    expect(client!.hello.kernelRelease).toMatch(/^6\./);

    const again = vesper('add', rig.name);
    expect(again.results.map((r) => r.outcome)).toEqual(['present', 'present']);

    const closed = new Promise<void>((resolve) => client!.once('close', () => resolve()));
    const removed = vesper('remove', rig.name);
    expect(removed.results.map((r) => [r.scope, r.outcome])).toEqual([
      ['live', 'removed'],
      ['config', 'removed'],
    ]);
    expect(findChannel(virshXml(rig.name, false))).toBeNull();
    expect(findChannel(virshXml(rig.name, true))).toBeNull();
    await Promise.race([closed, new Promise((_, rej) => setTimeout(() => rej(new Error('the link did not end')), 30_000))]);
    expect(vesper('remove', rig.name).results.map((r) => r.outcome)).toEqual(['absent', 'absent']);
  });

  it('a domain libvirt does not know is VSP_DOMAIN_NOT_FOUND, exit 3', () => {
    let status = 0;
    let stderr = '';
    try {
      execFileSync(process.execPath, [VESPER, 'channel', 'add', 'vesper-no-such-domain-x', '--connect', 'qemu:///system'], {
        encoding: 'utf8',
        stdio: 'pipe',
      });
    } catch (e) {
      status = (e as { status: number }).status;
      stderr = (e as { stderr: string }).stderr;
    }
    expect(status).toBe(3);
    expect(stderr).toContain('VSP_DOMAIN_NOT_FOUND');
  });
});
