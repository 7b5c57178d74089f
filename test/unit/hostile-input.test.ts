// What a hostile agent can send to the host's end of a link, one weakness at a time: each test
// here failed before the fix it names. The whole manager against hostile guests over real
// sockets is test/acceptance/hostile-guest.test.ts.
import { Duplex, PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AgentClient, type AgentRecord } from '../../host/channel/agent-client.js';
import { eventOfRecord } from '../../host/notify/record-event.js';
import { payloadFromColumn } from '../../host/store/event-row.js';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, encodeMessage, type pb } from '../../proto/codec.js';
import { encodeFrame } from '../../proto/frame.js';

/** An AgentClient on an in-memory duplex: `toHost` is what the agent writes, `fromHost` what the host wrote. */
function link(opts: ConstructorParameters<typeof AgentClient>[1] = {}) {
  const toHost = new PassThrough();
  const fromHost = new PassThrough();
  const c = new AgentClient(Duplex.from({ readable: toHost, writable: fromHost }), { autoAck: false, fedExternally: true, ...opts });
  const errors: string[] = [];
  c.on('protocolError', (e) => errors.push(`${e.code}: ${e.message}`));
  const records: AgentRecord[] = [];
  c.on('batch', (rs) => records.push(...rs));
  const feed = (b: Buffer): void => c.feed(b);
  return { c, feed, errors, records, fromHost };
}

const frame = (m: pb.IFrame): Buffer => encodeFrame(encodeMessage(m));
const hello = (loaded: pb.ILoadedProbe[] = [], extra: pb.IHello = {}): Buffer =>
  frame({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'b', agentPid: 1, loaded, ...extra } });

/** A record whose header is sound and whose body (field 18, loss) is not a message. */
function brokenBodyRecord(seq: number): Buffer {
  return Buffer.from([0x08, seq, 0x92, 0x01, 0x03, 0xff, 0xff, 0xff]);
}

describe('records with a sound header and a broken body', () => {
  it('are delivered, and reading them never throws: the payload says undecodable', () => {
    const l = link();
    l.feed(hello());
    l.feed(encodeBatchFrame([brokenBodyRecord(1)]));
    expect(l.records).toHaveLength(1);
    const r = l.records[0]!;
    expect(r.kind).toBe('loss');
    // GuestLink reads r.raw.loss for every loss record: this threw out of the socket handler,
    // and took vesperd down, before decodeRecord
    expect(() => r.raw).not.toThrow();
    expect(r.raw.loss).toBeFalsy();
    expect(r.raw.seq).toBe(1);
    const ev = eventOfRecord('vm1', 'b/1', r, 1);
    expect(ev.payload).toEqual({ undecodable: true, monoNs: 0 });
    // a stored row of it, read back (vesper events)
    expect(payloadFromColumn(r.bytes)).toEqual({ undecodable: true, monoNs: 0 });
    l.c.close();
  });
});
