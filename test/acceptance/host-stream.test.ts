// The record stream under stress: the host goes away mid-stream and comes back, the ring
// overflows while nobody reads it, and either side receives garbage.
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, decodeMessage, encodeMessage, v1, type pb } from '../../proto/codec.js';
import { ErrorCode } from '../../proto/errors.js';
import { FRAME_MARKER, FrameDecoder, encodeFrame } from '../../proto/frame.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();

/** A process that ignores SIGUSR1, so that signals can be sent to it as fast as the kernel takes them. */
function ignoringTarget(): Promise<ChildProcess> {
  const p = spawn('sh', ['-c', 'trap "" USR1; exec sleep 600'], { stdio: 'ignore' });
  return sleep(300).then(() => p);
}

function storm(pid: number, n: number): void {
  for (let i = 0; i < n; i++) process.kill(pid, 'SIGUSR1');
}

/** The same, in bursts the kernel's per-CPU trace buffer holds while the agent drains it. */
async function pacedStorm(pid: number, n: number, burst = 2000): Promise<void> {
  for (let sent = 0; sent < n; sent += burst) {
    storm(pid, Math.min(burst, n - sent));
    await sleep(5);
  }
}

const STORM_PARAMS = { signals: 'USR1', include_ignored: 'true', comms: 'sleep' };

describe.skipIf(Boolean(why))('record stream: reconnects, overflow, hostile bytes', () => {
  const agents: LocalAgent[] = [];
  const clients: AgentClient[] = [];
  let target: ChildProcess;

  beforeAll(async () => {
    target = await ignoringTarget();
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const a of agents.splice(0)) await a.stop();
  });
  afterAll(() => {
    target?.kill('SIGKILL');
  });

  async function newAgent(o: ConstructorParameters<typeof LocalAgent>[0] = {}): Promise<LocalAgent> {
    const a = new LocalAgent(o);
    agents.push(a);
    await a.start();
    return a;
  }
  async function connect(a: LocalAgent, o: Parameters<LocalAgent['connect']>[0] = {}): Promise<AgentClient> {
    const c = await a.connect(o);
    clients.push(c);
    return c;
  }

  it('the host disconnects mid-stream and reconnects: every record arrives, none twice', async () => {
    const agent = await newAgent({ traceBufferKb: 4096 });
    // Acknowledge lagging behind what was received, so that a reconnect really resends.
    const first = await connect(agent, { autoAck: false });
    let acked = 0;
    first.on('batch', () => {
      acked = Math.max(0, first.lastSeq - 200);
      first.ack(acked);
    });
    // What the host keeps, de-duplicated by sequence number (as a store would).
    const seen = new Map<number, AgentRecord>();
    let duplicates = 0;
    const keep = (r: AgentRecord) => {
      const had = seen.get(r.seq);
      if (had) {
        duplicates++;
        expect(r.monoNs).toBe(had.monoNs); // a resend is the same record, not a new one
        return;
      }
      seen.set(r.seq, r);
    };
    first.on('record', keep);
    await first.load(agent.module('signal'), { params: STORM_PARAMS });
    const N1 = 20_000;
    const N2 = 10_000;
    const firstStorm = pacedStorm(target.pid!, N1);
    await waitFor('part of the first storm', () => seen.size >= 2000);
    first.close(); // mid-stream: the storm goes on
    await firstStorm;
    await pacedStorm(target.pid!, N2); // sent while no host listens
    // A host that resumes from what it acknowledged, not from what it last saw: the agent
    // sends the unacknowledged tail again.
    const second = await connect(agent, { resumeAfterSeq: acked });
    second.on('record', keep);
    const total = N1 + N2;
    await waitFor(`${total} signal records`, () => seen.size >= total, 30_000).catch((e: Error) => {
      throw new Error(
        `${e.message}: have ${seen.size}, duplicates ${duplicates}, acked ${acked}, first.lastSeq ${first.lastSeq}, second.lastSeq ${second.lastSeq}, gaps ${second.gaps}, loss ${JSON.stringify([...seen.values()].filter((r) => r.kind === 'loss').map((r) => r.raw.loss))}`,
      );
    });
    await sleep(200);
    expect(seen.size).toBe(total);
    const seqs = [...seen.keys()].sort((a, b) => a - b);
    expect(seqs[0]).toBe(1);
    expect(seqs.at(-1)).toBe(total);
    expect([...seen.values()].filter((r) => r.kind !== 'signal').map((r) => r.raw)).toEqual([]);
    expect(
      [...seen.values()].every((r) => r.kind === 'signal' && r.raw.signal?.sig === 10 && r.raw.signal?.target?.pid === target.pid),
    ).toBe(true);
    // The agent resent what had not been acknowledged, and the copies were recognised.
    expect(duplicates).toBeGreaterThan(0);
    expect(first.gaps + second.gaps).toBe(0);
  });

  it('an overflowing ring produces a loss record whose count matches what was dropped', async () => {
    const agent = await newAgent({ ringRecords: 1000 });
    const c1 = await connect(agent);
    await c1.load(agent.module('signal'), { params: STORM_PARAMS });
    c1.close();
    const N = 6000;
    storm(target.pid!, N);
    await sleep(500); // let the agent read the kernel buffer into its (too small) ring
    const c2 = await connect(agent, { resumeAfterSeq: c1.lastSeq });
    const got: AgentRecord[] = [];
    c2.on('record', (r) => got.push(r));
    const lost = () => got.filter((r) => r.kind === 'loss').reduce((n, r) => n + Number(r.raw.loss?.count ?? 0), 0);
    const signals = () => got.filter((r) => r.kind === 'signal').length;
    await waitFor('every signal told or counted', () => signals() + lost() >= N, 15_000);
    await sleep(200);
    const losses = got.filter((r) => r.kind === 'loss');
    expect(losses.length).toBe(1);
    expect(losses[0]!.raw.loss?.source).toBe(v1.LossEvent.Source.AGENT_RING);
    expect(signals()).toBeLessThan(1000);
    expect(signals() + lost()).toBe(N);
  });

  it('events the kernel overwrote before the agent read them are counted, not silently gone', async () => {
    const agent = await newAgent({ traceBufferKb: 8 });
    const c = await connect(agent);
    const got: AgentRecord[] = [];
    c.on('record', (r) => got.push(r));
    await c.load(agent.module('signal'), { params: STORM_PARAMS });
    const N = 30_000;
    storm(target.pid!, N); // one burst into an 8 KiB per-CPU buffer: it must overflow
    const lost = () => got.filter((r) => r.kind === 'loss').reduce((n, r) => n + Number(r.raw.loss?.count ?? 0), 0);
    const signals = () => got.filter((r) => r.kind === 'signal').length;
    await waitFor('every signal told or counted', () => signals() + lost() >= N, 15_000).catch((e: Error) => {
      throw new Error(`${e.message}: ${signals()} told, ${lost()} counted lost`);
    });
    await sleep(200);
    expect(got.some((r) => r.kind === 'loss' && r.raw.loss?.source === v1.LossEvent.Source.KERNEL_RING)).toBe(true);
    expect(signals() + lost()).toBe(N);
  });

  it('garbage, oversized and truncated frames from the host: clear errors, and the agent keeps answering', async () => {
    const agent = await newAgent();
    const sock = net.createConnection(agent.socket);
    clients.push({ close: () => sock.destroy() } as unknown as AgentClient);
    const frames: pb.Frame[] = [];
    const dec = new FrameDecoder({ maxFrameBytes: 1 << 20, onFrame: (p) => frames.push(decodeMessage(p)), onError: () => undefined });
    sock.on('data', (c: Buffer) => dec.push(c));
    await waitFor('hello', () => frames.find((f) => f.body === 'hello'));
    sock.write(encodeFrame(encodeMessage({ helloAck: { protocolVersion: PROTOCOL_VERSION, ackedSeq: 0 } })));
    const errs = () => frames.filter((f) => f.body === 'error').map((f) => f.error!.code);
    // plain garbage
    sock.write(Buffer.from('this is not a frame at all, just text from a confused peer'));
    // a length prefix of 512 MiB
    sock.write(Buffer.concat([FRAME_MARKER, Buffer.from([0x80, 0x80, 0x80, 0x80, 0x02]), Buffer.alloc(16, 0x42)]));
    // a frame with a bad CRC
    const bad = encodeFrame(encodeMessage({ ping: { nonce: 1 } }));
    bad[bad.length - 1]! ^= 0xff;
    sock.write(bad);
    // a valid frame whose payload is not a message
    sock.write(encodeFrame(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])));
    // a truncated frame, then a good ping that must still be answered
    const cut = encodeFrame(encodeMessage({ ping: { nonce: 2 } }));
    sock.write(cut.subarray(0, cut.length - 3));
    sock.write(encodeFrame(encodeMessage({ reqId: 7, ping: { nonce: 3 } })));
    const pong = await waitFor('pong', () => frames.find((f) => f.body === 'pong' && f.reqId === 7));
    expect(Number(pong.pong!.nonce)).toBe(3);
    await waitFor('error reports', () => errs().length >= 4);
    expect(errs()).toEqual(
      expect.arrayContaining([ErrorCode.FRAME_GARBAGE, ErrorCode.FRAME_TOO_LARGE, ErrorCode.FRAME_CRC, ErrorCode.MESSAGE_DECODE]),
    );
    sock.destroy();
    // The agent is still there for a proper host.
    const c = await connect(agent);
    expect(await c.ping()).toBeLessThan(1000);
    expect(agent.proc?.exitCode).toBeNull();
  });

  it('garbage, oversized and truncated frames from an agent: clear errors at the host, never a crash or a hang', async () => {
    const dir = (await newAgent()).dir; // only for a private directory
    const path = join(dir, 'fake-agent.sock');
    const hello: pb.IFrame = {
      hello: {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: '0.1.0',
        kernelRelease: 'fake',
        loaded: [{ handle: 1, name: 'signal', instance: 0, events: [{ id: 1, name: 'signal' }] }],
      },
    };
    const rec = v1.Record.encode({
      seq: 1,
      monoNs: 5,
      handle: 1,
      eventId: 1,
      signal: { sig: 11, target: { pid: 42, comm: 'x' } },
    }).finish();
    const server = net.createServer((s) => {
      s.write(Buffer.from('\x00\x01garbage before anything'));
      s.write(Buffer.concat([FRAME_MARKER, Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])])); // 4 GiB
      s.write(encodeFrame(encodeMessage(hello)));
      // Records only after the host's hello_ack, as the protocol says.
      s.once('data', () => {
        s.write(encodeFrame(Buffer.from([0x0a, 0xff, 0xff, 0xff]))); // undecodable
        s.write(encodeBatchFrame([rec]));
        const more = encodeBatchFrame([rec]);
        s.write(more.subarray(0, more.length - 2)); // cut short, then silence
      });
    });
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const c = await AgentClient.connectUnix(path, { handshakeTimeoutMs: 2000 });
      clients.push(c);
      const errors: string[] = [];
      const got: AgentRecord[] = [];
      c.on('protocolError', (e) => errors.push(e.code));
      c.on('record', (r) => got.push(r));
      await waitFor('the one good record', () => got.length === 1);
      await sleep(100);
      expect(got[0]).toMatchObject({ seq: 1, probe: 'signal', event: 'signal', kind: 'signal' });
      c.close(); // the cut frame is dropped with an error, not waited for
      expect(errors).toEqual(expect.arrayContaining([ErrorCode.MESSAGE_DECODE, ErrorCode.FRAME_TRUNCATED]));
      expect(got).toHaveLength(1);
      // A peer that accepts and never speaks: a bounded wait, then a clear error.
      const silent = net.createServer(() => undefined);
      const spath = join(dir, 'silent.sock');
      await new Promise<void>((r) => silent.listen(spath, r));
      const t0 = Date.now();
      await expect(AgentClient.connectUnix(spath, { handshakeTimeoutMs: 500 })).rejects.toMatchObject({
        code: ErrorCode.HANDSHAKE_TIMEOUT,
      });
      expect(Date.now() - t0).toBeLessThan(3000);
      silent.close();
    } finally {
      server.close();
    }
  });
});
