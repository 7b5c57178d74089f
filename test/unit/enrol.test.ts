// Enrolment (docs/trust.md): the agent's pinning logic (guest-agent/modules/host-trust.ts) on its
// own, then a real agent (its Session, runtime and trust; a unix socket in place of the
// virtio-serial port) against the host's real AgentClient: the first host is pinned, a module
// signed by another key is refused, a host with another key is refused on both sides with
// VSP_HOST_KEY_MISMATCH until root resets the pin, and then the new host enrols.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../guest-agent/agent.js';
import { UnixListenTransport } from '../../guest-agent/channel/transports.js';
import { HostTrust, PIN_FILE, resetPin } from '../../guest-agent/modules/host-trust.js';
import { AgentClient } from '../../host/channel/agent-client.js';
import { loadOrCreateHostKey, type HostKey } from '../../host/keys.js';
import { readProbeBundle, signModule } from '../../host/probes/package.js';
import { PROTOCOL_VERSION, decodeMessage, encodeMessage, type pb } from '../../proto/codec.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';
import { ENROL_NONCE_BYTES, offerHostKey } from '../../proto/enrol.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';

let tmp: string;
let hostA: HostKey;
let hostB: HostKey;
const silent = pino({ level: 'silent' });

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vesper-enrol-'));
  hostA = loadOrCreateHostKey(join(tmp, 'keys-a'));
  hostB = loadOrCreateHostKey(join(tmp, 'keys-b'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let n = 0;
const stateDir = (): string => join(tmp, `state-${++n}`);
const ack = (k: HostKey, nonce: Uint8Array): pb.IHelloAck => ({ protocolVersion: 1, ...offerHostKey(k.privateKey, k.publicKey, nonce) });
const moduleBy = (k: HostKey): pb.IProbeModule => signModule(readProbeBundle('heartbeat'), k);

describe('HostTrust: pinning on first contact', () => {
  it('an agent with no pin says it enrols, pins the first offered key that proves itself, and trusts only it after', () => {
    const dir = stateDir();
    const t = HostTrust.pinned(dir, true, silent);
    const h = t.helloFields();
    expect(h).toMatchObject({ trustedKeyIds: [], enrols: true });
    expect(h.enrolNonce.length).toBe(ENROL_NONCE_BYTES);
    expect(caught(() => t.verifyModule(moduleBy(hostA))).code).toBe(ErrorCode.KEY_MISSING);

    expect(t.onHelloAck(ack(hostA, h.enrolNonce), h.enrolNonce)).toEqual({ ok: true, enrolled: hostA.id });
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe(hostA.publicPem);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(t.helloFields()).toMatchObject({ trustedKeyIds: [hostA.id], enrols: false });
    expect(t.verifyModule(moduleBy(hostA)).length).toBe(32);
    expect(caught(() => t.verifyModule(moduleBy(hostB))).code).toBe(ErrorCode.PROBE_UNKNOWN_KEY);

    // the same host again: trusted; another host: refused, and the pin stays
    const h2 = t.helloFields();
    expect(t.onHelloAck(ack(hostA, h2.enrolNonce), h2.enrolNonce)).toEqual({ ok: true });
    const v = t.onHelloAck(ack(hostB, h2.enrolNonce), h2.enrolNonce);
    expect(v.ok).toBe(false);
    const e = (v as { error: VesperError }).error;
    expect(e.code).toBe(ErrorCode.HOST_KEY_MISMATCH);
    expect(e.message).toContain(hostB.id);
    expect(e.message).toContain('vesper-agent enrol --reset');
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe(hostA.publicPem);

    // a new agent (restart) reads the same pin
    expect(HostTrust.pinned(dir, true, silent).ids()).toEqual([hostA.id]);
  });

  it("a key whose holder does not sign this hello's nonce is not pinned (replayed or forged answer)", () => {
    const dir = stateDir();
    const t = HostTrust.pinned(dir, true, silent);
    const h = t.helloFields();
    const other = Buffer.alloc(ENROL_NONCE_BYTES, 7);
    const replay = t.onHelloAck(ack(hostA, other), h.enrolNonce);
    expect(replay.ok).toBe(false);
    expect((replay as { error: VesperError }).error.code).toBe(ErrorCode.KEY_INVALID);
    // B's key offered with A's signature
    const forged = { ...ack(hostB, h.enrolNonce), hostKeyProof: ack(hostA, h.enrolNonce).hostKeyProof };
    expect(t.onHelloAck(forged, h.enrolNonce).ok).toBe(false);
    expect(existsSync(join(dir, PIN_FILE))).toBe(false);
  });

  it("the answer to this agent's earlier hello (one that waited in the port for the next host) is stale: ignored, not refused, not pinned", () => {
    const dir = stateDir();
    const t = HostTrust.pinned(dir, true, silent);
    const earlier = t.helloFields(); // written on a link whose host went away before answering
    const now = t.helloFields();
    expect(t.onHelloAck(ack(hostA, earlier.enrolNonce), now.enrolNonce)).toEqual({ ok: 'stale' });
    expect(existsSync(join(dir, PIN_FILE))).toBe(false);
    // this link's own answer then enrols
    expect(t.onHelloAck(ack(hostA, now.enrolNonce), now.enrolNonce)).toEqual({ ok: true, enrolled: hostA.id });
    // a nonce this agent never sent is still a refusal
    const v = t.onHelloAck(ack(hostA, Buffer.alloc(ENROL_NONCE_BYTES, 9)), t.helloFields().enrolNonce);
    expect((v as { error: VesperError }).error.code).toBe(ErrorCode.KEY_INVALID);
  });

  it('a host that offers no key enrols nothing: the link goes on, no module loads', () => {
    const dir = stateDir();
    const t = HostTrust.pinned(dir, true, silent);
    const h = t.helloFields();
    expect(t.onHelloAck({ protocolVersion: 1 }, h.enrolNonce)).toEqual({ ok: true });
    expect(existsSync(join(dir, PIN_FILE))).toBe(false);
    expect(caught(() => t.verifyModule(moduleBy(hostA))).code).toBe(ErrorCode.KEY_MISSING);
  });

  it('never enrols off the virtio-serial port: no pin and no --host-key is a refusal to start', () => {
    const e = caught(() => HostTrust.pinned(stateDir(), false, silent));
    expect(e.code).toBe(ErrorCode.KEY_MISSING);
    expect(e.message).toContain('virtio-serial');
    // a pin put there by root (pre-seeded) is trusted on any transport
    const dir = stateDir();
    mkdirSync(dir);
    writeFileSync(join(dir, PIN_FILE), hostA.publicPem);
    const t = HostTrust.pinned(dir, false, silent);
    expect(t.helloFields()).toMatchObject({ trustedKeyIds: [hostA.id], enrols: false });
  });

  it('a damaged pin trusts nothing and enrols nobody', () => {
    const dir = stateDir();
    mkdirSync(dir);
    writeFileSync(join(dir, PIN_FILE), 'not a key');
    const t = HostTrust.pinned(dir, true, silent);
    const h = t.helloFields();
    expect(h.enrols).toBe(false);
    const v = t.onHelloAck(ack(hostA, h.enrolNonce), h.enrolNonce);
    expect((v as { error: VesperError }).error.code).toBe(ErrorCode.KEY_INVALID);
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe('not a key');
    expect(caught(() => t.verifyModule(moduleBy(hostA))).code).toBe(ErrorCode.KEY_INVALID);
  });

  it('a reset forgets the pin: the running agent enrols the next host at its next hello', () => {
    const dir = stateDir();
    const t = HostTrust.pinned(dir, true, silent);
    let h = t.helloFields();
    t.onHelloAck(ack(hostA, h.enrolNonce), h.enrolNonce);
    expect(resetPin(dir)).toEqual({ removed: true, path: join(dir, PIN_FILE) });
    expect(resetPin(dir).removed).toBe(false);
    h = t.helloFields();
    expect(h).toMatchObject({ trustedKeyIds: [], enrols: true });
    expect(t.onHelloAck(ack(hostB, h.enrolNonce), h.enrolNonce)).toEqual({ ok: true, enrolled: hostB.id });
    expect(caught(() => t.verifyModule(moduleBy(hostA))).code).toBe(ErrorCode.PROBE_UNKNOWN_KEY);
  });

  it('a key given with --host-key is never replaced: another host is refused, and nothing is pinned', () => {
    const pub = join(tmp, 'given.pub');
    writeFileSync(pub, hostA.publicPem);
    const t = HostTrust.given(pub, silent);
    const h = t.helloFields();
    expect(h).toMatchObject({ trustedKeyIds: [hostA.id], enrols: false });
    const v = t.onHelloAck(ack(hostB, h.enrolNonce), h.enrolNonce);
    expect((v as { error: VesperError }).error.code).toBe(ErrorCode.HOST_KEY_MISMATCH);
    expect((v as { error: VesperError }).error.message).toContain('vesper agent install');
  });

  it('keys of another type are not pinned', () => {
    const t = HostTrust.pinned(stateDir(), true, silent);
    const h = t.helloFields();
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const v = t.onHelloAck({ hostKey: ec.publicKey.export({ format: 'der', type: 'spki' }), hostKeyProof: Buffer.alloc(64) }, h.enrolNonce);
    expect((v as { error: VesperError }).error.message).toContain('not ed25519');
  });
});

/**
 * A host that answers the hello offering `key` and does not check the hello's trusted ids
 * itself: what the agent sends back until it closes the link (bounded: 5 s).
 */
function rawHost(sock: string, key: HostKey): Promise<pb.Frame[]> {
  return new Promise((resolve, reject) => {
    const got: pb.Frame[] = [];
    const s = net.createConnection(sock);
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`the agent did not close the link within 5 s (got ${got.map((f) => f.body).join(', ')})`));
    }, 5000);
    const dec = new FrameDecoder({
      maxFrameBytes: 1 << 20,
      onFrame: (p) => {
        const f = decodeMessage(p);
        got.push(f);
        if (f.body === 'hello')
          s.write(
            encodeFrame(
              encodeMessage({
                helloAck: {
                  protocolVersion: PROTOCOL_VERSION,
                  ...offerHostKey(key.privateKey, key.publicKey, f.hello!.enrolNonce ?? new Uint8Array()),
                },
              }),
            ),
          );
      },
      onError: (e) => reject(e),
    });
    s.on('connect', () => s.write(encodeFrame(encodeMessage({ ping: { nonce: 0 } }))));
    s.on('data', (c) => dec.push(c));
    s.on('close', () => {
      clearTimeout(t);
      resolve(got);
    });
  });
}

describe('enrolment over a real link (agent Session and host AgentClient)', () => {
  let agent: Agent | null = null;
  let clients: AgentClient[] = [];
  afterEach(async () => {
    for (const c of clients) c.close();
    clients = [];
    await agent?.stop();
    agent = null;
  });

  async function startAgent(dir: string): Promise<string> {
    const sock = join(tmp, `agent-${++n}.sock`);
    // canEnrol stands for the virtio transport here: the unix socket plays the port.
    agent = new Agent({
      transport: new UnixListenTransport(sock),
      trust: HostTrust.pinned(dir, true, silent),
      log: silent,
      ringRecords: 1024,
      ringBytes: 1 << 20,
      traceBufferKb: 64,
      tracefsPath: join(tmp, 'no-tracefs'),
      readerThreads: 0,
    });
    await agent.start();
    return sock;
  }
  const connect = async (sock: string, key: HostKey): Promise<AgentClient> => {
    const c = await AgentClient.connectUnix(sock, { hostKey: key, handshakeTimeoutMs: 5000 });
    clients.push(c);
    return c;
  };
  const refusal = async (p: Promise<unknown>): Promise<VesperError> => {
    try {
      await p;
    } catch (err) {
      return err as VesperError;
    }
    throw new Error('expected the handshake to fail');
  };

  it('first host pinned; a module by another key refused; a new host key refused until reset, then enrolled', async () => {
    const dir = stateDir();
    const sock = await startAgent(dir);

    const a = await connect(sock, hostA);
    expect(a.hello.enrols).toBe(true);
    expect(a.hello.trustedKeyIds).toEqual([]);
    await a.ping(); // the agent has read our answer (and pinned) before it answers this
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe(hostA.publicPem);
    const loaded = await a.load(moduleBy(hostA));
    expect(loaded.map((p) => p.name)).toEqual(['heartbeat']);
    await a.unload('heartbeat');
    const stranger = await a.load(moduleBy(hostB)).catch((err: VesperError) => err);
    expect((stranger as VesperError).code).toBe(ErrorCode.PROBE_UNKNOWN_KEY);
    a.close();

    // the same host again: it says it trusts A, nothing to enrol
    const a2 = await connect(sock, hostA);
    expect(a2.hello.trustedKeyIds).toEqual([hostA.id]);
    expect(a2.hello.enrols).toBe(false);
    a2.close();

    // a host with another key: refused by the host's own check of the hello ...
    const e = await refusal(connect(sock, hostB));
    expect(e).toBeInstanceOf(VesperError);
    expect(e.code).toBe(ErrorCode.HOST_KEY_MISMATCH);
    expect(e.message).toContain(hostA.id);
    expect(e.message).toContain(hostB.id);
    // ... and by the agent, whatever the host does: one that ignores the hello's ids still
    // gets an error frame with the code, and no records
    const frames = (await rawHost(sock, hostB)).filter((f) => f.body !== 'pong'); // (the answer to its ping)
    expect(frames.map((f) => f.body)).toEqual(['hello', 'error']);
    expect(frames[1]!.error!.code).toBe(ErrorCode.HOST_KEY_MISMATCH);
    expect(frames[1]!.error!.message).toContain('vesper-agent enrol --reset');
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe(hostA.publicPem);

    // root in the guest re-enrols: the next host is pinned
    resetPin(dir);
    const b = await connect(sock, hostB);
    expect(b.hello.enrols).toBe(true);
    await b.ping();
    expect(readFileSync(join(dir, PIN_FILE), 'utf8')).toBe(hostB.publicPem);
    expect((await b.load(moduleBy(hostB))).map((p) => p.name)).toEqual(['heartbeat']);
    const old = await b.load(moduleBy(hostA)).catch((err: VesperError) => err);
    expect((old as VesperError).code).toBe(ErrorCode.PROBE_UNKNOWN_KEY);
  });
});
