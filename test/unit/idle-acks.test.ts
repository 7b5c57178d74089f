// An agent at rest is not woken for every heartbeat's ack: a trickle of records (fewer than
// IDLE_ACK_BELOW_RECORDS unacknowledged) is acknowledged IDLE_ACK_MS later, by vesperd's
// coalescer and by an AgentClient asked to (ackIdleMs); more than a trickle as before.
import { Duplex, PassThrough } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentClient, IDLE_ACK_BELOW_RECORDS, IDLE_ACK_MS } from '../../host/channel/agent-client.js';
import { ACK_EVERY_MS, AckCoalescer } from '../../host/daemon/ack-coalescer.js';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, encodeMessage, v1 } from '../../proto/codec.js';
import { encodeFrame } from '../../proto/frame.js';
import { onHostFrames } from '../helpers/host-frames.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('AckCoalescer', () => {
  it('acknowledges a trickle at the idle tick, a due link at the next tick, and a trickle that grew as a due one', () => {
    vi.useFakeTimers();
    const c = new AckCoalescer();
    const sent: string[] = [];
    const link = (name: string) => ({ sendAck: () => sent.push(name) });
    const [quiet, busy, grows] = [link('quiet'), link('busy'), link('grows')];
    c.later(quiet);
    c.later(grows);
    c.soon(busy);
    vi.advanceTimersByTime(ACK_EVERY_MS);
    expect(sent).toEqual(['busy']);
    c.soon(grows); // more came: due now, and not again at the idle tick
    vi.advanceTimersByTime(ACK_EVERY_MS);
    expect(sent).toEqual(['busy', 'grows']);
    c.later(busy);
    c.soon(busy); // due outranks idle
    c.later(busy); // and a trickle after it does not push it back
    vi.advanceTimersByTime(ACK_EVERY_MS);
    expect(sent).toEqual(['busy', 'grows', 'busy']);
    vi.advanceTimersByTime(IDLE_ACK_MS);
    expect(sent).toEqual(['busy', 'grows', 'busy', 'quiet']);
    c.later(quiet);
    c.drop(quiet);
    vi.advanceTimersByTime(IDLE_ACK_MS);
    expect(sent).toHaveLength(4);
    c.stop();
  });
});

/** An AgentClient that acks by itself, on an in-memory link; `acks` are the seqs it acknowledged. */
function client(ackIdleMs: number) {
  const toHost = new PassThrough();
  const fromHost = new PassThrough();
  const c = new AgentClient(Duplex.from({ readable: toHost, writable: fromHost }), { autoAck: true, ackIdleMs, fedExternally: true });
  const acks: number[] = [];
  onHostFrames(fromHost, (f) => {
    if (f.ack) acks.push(Number(f.ack.seq));
  });
  c.feed(encodeFrame(encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'b', agentPid: 1 } })));
  let seq = 0;
  /** n loss records with the next sequence numbers, in one batch */
  const batch = (n: number): void =>
    c.feed(encodeBatchFrame(Array.from({ length: n }, () => v1.Record.encode({ seq: ++seq, loss: { count: 1 } }).finish())));
  return { c, acks, batch };
}

/** lets the PassThrough carry what the client wrote */
const drain = () => new Promise((r) => setImmediate(r));

describe('AgentClient ackIdleMs', () => {
  it('acknowledges every batch at once without it', async () => {
    const l = client(0);
    l.batch(1);
    l.batch(1);
    await drain();
    expect(l.acks).toEqual([1, 2]);
    l.c.close();
  });

  it('acknowledges a trickle once, ackIdleMs after its first record, and more than a trickle at once', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const l = client(IDLE_ACK_MS);
    l.batch(1);
    l.batch(1);
    await drain();
    expect(l.acks).toEqual([]);
    vi.advanceTimersByTime(IDLE_ACK_MS - 1);
    await drain();
    expect(l.acks).toEqual([]);
    vi.advanceTimersByTime(1);
    await drain();
    expect(l.acks).toEqual([2]);
    l.batch(IDLE_ACK_BELOW_RECORDS);
    await drain();
    expect(l.acks).toEqual([2, 2 + IDLE_ACK_BELOW_RECORDS]);
    // A trickle then a storm: the storm's ack covers the trickle, and no late ack follows.
    l.batch(1);
    l.batch(IDLE_ACK_BELOW_RECORDS);
    vi.advanceTimersByTime(IDLE_ACK_MS);
    await drain();
    expect(l.acks).toEqual([2, 2 + IDLE_ACK_BELOW_RECORDS, 3 + 2 * IDLE_ACK_BELOW_RECORDS]);
    l.c.close();
  });
});
