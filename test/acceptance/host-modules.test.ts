// Probe modules are code from the host running as root in the guest: the agent runs only
// what the host's key signed, and a probe that fails is contained.
import { generateKeyPairSync } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { LocalAgent } from '../../host/channel/local-agent.js';
import { signModule } from '../../host/probes/package.js';
import { keyId, moduleDigest } from '../../proto/module-digest.js';
import { ErrorCode } from '../../proto/errors.js';
import { useLocalAgent } from '../helpers/agent-fixture.js';
import { testProbeManifest } from '../helpers/agent-fixture.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();

describe.skipIf(Boolean(why))('probe modules: signatures and containment', () => {
  const f = useLocalAgent();
  let agent: LocalAgent;
  let client: AgentClient;
  const records = f.records;

  beforeAll(async () => {
    agent = f.agent;
    client = f.client;
  });

  const refused = async (mod: Parameters<AgentClient['load']>[0], code: string) => {
    await expect(client.load(mod)).rejects.toMatchObject({ code });
    expect(await client.list()).toEqual([]);
  };

  it('refuses an unsigned module', async () => {
    const m = agent.module('heartbeat');
    await refused({ ...m, signature: new Uint8Array() }, ErrorCode.PROBE_UNSIGNED);
  });

  it('refuses a tampered module, whether or not the digest was fixed up', async () => {
    const m = agent.module('heartbeat');
    const code = Buffer.from(m.code!);
    code[code.length - 2]! ^= 0x01;
    await refused({ ...m, code }, ErrorCode.PROBE_DIGEST_MISMATCH);
    await refused({ ...m, code, digest: moduleDigest(m.manifest!, code) }, ErrorCode.PROBE_BAD_SIGNATURE);
  });

  it('refuses a module signed by a key it does not trust', async () => {
    const other = generateKeyPairSync('ed25519');
    const key = { privateKey: other.privateKey, publicKey: other.publicKey, publicPem: '', id: keyId(other.publicKey), dir: '' };
    const m = agent.module('heartbeat');
    await refused(signModule({ manifestBytes: m.manifest!, code: m.code! }, key), ErrorCode.PROBE_UNKNOWN_KEY);
    // The same signature claimed under the trusted key id does not verify either.
    await refused(
      { ...signModule({ manifestBytes: m.manifest!, code: m.code! }, key), keyId: agent.key.id },
      ErrorCode.PROBE_BAD_SIGNATURE,
    );
  });

  it('rolls a failed load back completely', async () => {
    // The second instance's parameters are bad: the first must not stay behind.
    await expect(
      client.load(agent.module('signal'), { instances: 2, instanceParams: { 1: { signals: 'NOSUCHSIG' } } }),
    ).rejects.toMatchObject({ code: ErrorCode.PROBE_LOAD_FAILED });
    expect(await client.list()).toEqual([]);
    await expect(client.load(agent.module('signal'), { params: { nosuch: '1' } })).rejects.toMatchObject({
      code: ErrorCode.PROBE_BAD_PARAM,
    });
    // A quote in a name cannot break out of the kernel filter: it is taken out.
    await expect(client.load(agent.module('signal'), { params: { comms: 'a"b' } })).resolves.toHaveLength(1);
    await client.unload('signal');
  });

  it('unloads and reports a probe that throws, and keeps serving the others', async () => {
    const [hb] = await client.load(agent.module('heartbeat'), { params: { interval_ms: '50' } });
    const code = Buffer.from("export default { setup(ctx) { ctx.every(30, () => { throw new Error('probe bug: boom'); }); } };\n");
    const [bad] = await client.load(signModule({ manifestBytes: testProbeManifest('faulty'), code }, agent.key));
    const fault = await waitFor('probe fault record', () => records.find((r) => r.kind === 'probeFault'));
    expect(fault.raw.probeFault).toMatchObject({ handle: bad!.handle, probe: 'faulty', code: ErrorCode.PROBE_CRASHED, unloaded: true });
    expect(fault.raw.probeFault?.message).toContain('probe bug: boom');
    const after = fault.seq;
    const beats = await waitFor('heartbeats after the fault', () => {
      const n = records.filter((r) => r.kind === 'heartbeat' && r.seq > after).length;
      return n >= 3 ? n : undefined;
    });
    expect(beats).toBeGreaterThanOrEqual(3);
    const loaded = await client.list();
    expect(loaded.map((l) => l.name)).toEqual(['heartbeat']);
    expect(loaded[0]!.handle).toBe(hb!.handle);
    // A setup that throws is a failed load, not a crash of anything.
    const throwing = Buffer.from("export default { setup() { throw new Error('cannot start'); } };\n");
    await expect(client.load(signModule({ manifestBytes: testProbeManifest('nostart'), code: throwing }, agent.key))).rejects.toMatchObject(
      {
        code: ErrorCode.PROBE_LOAD_FAILED,
      },
    );
    await client.unload('heartbeat');
    expect(agent.proc?.exitCode).toBeNull();
  });
});
