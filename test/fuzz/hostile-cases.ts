// What a hostile guest sends, as fast-check arbitraries. A case is plain data (so fast-check can
// print and shrink it); `caseBytes` turns it into the writes for one link, given what the link
// has seen so far (the sequence numbers it used). Every string a hostile guest sends carries
// HOSTILE_MARK, so that a store can be searched for anything of theirs under another VM's name.
import fc from 'fast-check';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, encodeMessage, v1, type pb } from '../../proto/codec.js';
import { FRAME_MARKER, encodeFrame, writeVarint } from '../../proto/frame.js';

export const HOSTILE_MARK = 'HOSTILE';
/** the manager's maximum frame payload (DEFAULT_MAX_FRAME_BYTES) */
export const MAX_FRAME = 1 << 20;

/** What a hostile link remembers between cases. */
export interface LinkState {
  /** the VM this link belongs to, and the other VMs it may pretend to be */
  vm: string;
  others: string[];
  /** the boot ids and pids of other guests, to claim in hellos */
  otherRuns: Array<{ bootId: string; pid: number }>;
  /** the highest sequence number sent on this link */
  seq: number;
}

type Seqs = 'next' | 'replay' | 'decreasing' | 'huge' | 'gap' | 'dupInBatch' | 'zero';
type Claim = 'own' | 'otherBoot' | 'otherVmName' | 'hostPlugin' | 'agentName' | 'badName';

export type HostileCase =
  | { k: 'bytes'; data: Uint8Array; writes: number }
  | { k: 'garbageThenFrame'; garbage: Uint8Array; seqs: Seqs }
  | { k: 'badCrc'; flip: number }
  | { k: 'badLength'; declared: number; actual: Uint8Array }
  | { k: 'truncated'; cut: number; thenValid: boolean }
  | { k: 'hugeLength'; len: number; tail: Uint8Array }
  | { k: 'bigPartial'; have: number }
  | { k: 'flood'; frames: number; smallWrites: boolean; what: 'ping' | 'records' | 'unsolicited' | 'hello' }
  | { k: 'hello'; claim: Claim; invalidUtf8: boolean; bigStrings: boolean; version: number; loadedCount: number }
  | { k: 'records'; seqs: Seqs; n: number; handle: number; payloadKind: number; badPayload: boolean; invalidUtf8: boolean }
  | { k: 'unknownMessage'; field: number; wire: 0 | 2 }
  | { k: 'request'; body: 'loadProbe' | 'unloadProbe' | 'setParams' | 'listProbes' | 'ping' | 'ack' | 'helloAck'; reqId: number }
  | { k: 'response'; body: 'loadResult' | 'pong' | 'probeList' | 'unloadResult' | 'setParamsResult' | 'error'; reqId: number }
  | { k: 'stopReading'; ms: number; hellos: number }
  | { k: 'close'; midFrame: boolean };

const seqsArb = fc.constantFrom<Seqs>('next', 'next', 'replay', 'decreasing', 'huge', 'gap', 'dupInBatch', 'zero');

/** Every case kind, weighted so that a run of a few thousand sees each many times. */
export function hostileCaseArb(): fc.Arbitrary<HostileCase> {
  return fc.oneof(
    {
      weight: 3,
      arbitrary: fc.record({
        k: fc.constant('bytes' as const),
        data: fc.uint8Array({ maxLength: 2048 }),
        writes: fc.integer({ min: 1, max: 8 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({ k: fc.constant('garbageThenFrame' as const), garbage: fc.uint8Array({ maxLength: 512 }), seqs: seqsArb }),
    },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('badCrc' as const), flip: fc.nat() }) },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('badLength' as const),
        declared: fc.integer({ min: 0, max: 4096 }),
        actual: fc.uint8Array({ maxLength: 256 }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('truncated' as const), cut: fc.nat(), thenValid: fc.boolean() }) },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('hugeLength' as const),
        len: fc.integer({ min: MAX_FRAME + 1, max: 2 ** 35 - 1 }),
        tail: fc.uint8Array({ maxLength: 64 }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        k: fc.constant('bigPartial' as const),
        // mostly tens of kilobytes, sometimes all but the last byte of the largest frame
        have: fc.oneof(
          { weight: 4, arbitrary: fc.integer({ min: 1, max: 65_536 }) },
          { weight: 1, arbitrary: fc.integer({ min: 1, max: MAX_FRAME }) },
        ),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('flood' as const),
        frames: fc.integer({ min: 10, max: 400 }),
        smallWrites: fc.boolean(),
        what: fc.constantFrom('ping' as const, 'records' as const, 'unsolicited' as const, 'hello' as const),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        k: fc.constant('hello' as const),
        claim: fc.constantFrom<Claim>('own', 'otherBoot', 'otherVmName', 'hostPlugin', 'agentName', 'badName'),
        invalidUtf8: fc.boolean(),
        bigStrings: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
        // another protocol version makes the host close the link: rarely, or little else is tried
        version: fc.oneof({ weight: 30, arbitrary: fc.constant(PROTOCOL_VERSION) }, { weight: 1, arbitrary: fc.nat() }),
        loadedCount: fc.integer({ min: 0, max: 20 }),
      }),
    },
    {
      weight: 5,
      arbitrary: fc.record({
        k: fc.constant('records' as const),
        seqs: seqsArb,
        n: fc.integer({ min: 1, max: 64 }),
        handle: fc.integer({ min: 0, max: 25 }),
        payloadKind: fc.integer({ min: 9, max: 22 }),
        badPayload: fc.boolean(),
        invalidUtf8: fc.boolean(),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('unknownMessage' as const),
        field: fc.integer({ min: 17, max: 100_000 }),
        wire: fc.constantFrom(0 as const, 2 as const),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('request' as const),
        body: fc.constantFrom(
          'loadProbe' as const,
          'unloadProbe' as const,
          'setParams' as const,
          'listProbes' as const,
          'ping' as const,
          'ack' as const,
          'helloAck' as const,
        ),
        reqId: fc.nat(),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('response' as const),
        body: fc.constantFrom(
          'loadResult' as const,
          'pong' as const,
          'probeList' as const,
          'unloadResult' as const,
          'setParamsResult' as const,
          'error' as const,
        ),
        reqId: fc.nat(),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        k: fc.constant('stopReading' as const),
        ms: fc.integer({ min: 50, max: 600 }),
        hellos: fc.integer({ min: 0, max: 300 }),
      }),
    },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('close' as const), midFrame: fc.boolean() }) },
  );
}

// ---------------------------------------------------------------------------- building bytes

const frameOf = (m: pb.IFrame): Buffer => encodeFrame(encodeMessage(m));

/** A string field's bytes with invalid UTF-8 in it: the marker, then a lone continuation byte, an overlong form, a surrogate. */
function badUtf8(): Buffer {
  return Buffer.concat([Buffer.from(HOSTILE_MARK), Buffer.from([0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xff])]);
}

/**
 * Replaces every occurrence of `placeholder` (a string field's bytes, same length as its
 * replacement) inside an encoded message: how invalid UTF-8 gets into a string field that the
 * encoder would never write so.
 */
function swapBytes(buf: Buffer, placeholder: string, replacement: Buffer): Buffer {
  const p = Buffer.from(placeholder);
  if (p.length !== replacement.length) throw new Error('placeholder and replacement differ in length');
  let at = buf.indexOf(p);
  while (at >= 0) {
    replacement.copy(buf, at);
    at = buf.indexOf(p, at + p.length);
  }
  return buf;
}

const BAD_PLACEHOLDER = 'H'.repeat(badUtf8().length);
const HOST_PLUGIN_NAMES = ['libvirt', 'channel', 'action', 'pacemaker'];

function helloMessage(c: Extract<HostileCase, { k: 'hello' }> | null, s: LinkState, n: number): pb.IFrame {
  const claim = c?.claim ?? 'own';
  const other = s.otherRuns[n % Math.max(1, s.otherRuns.length)];
  const name = (i: number): string => {
    switch (claim) {
      case 'hostPlugin':
        return HOST_PLUGIN_NAMES[i % HOST_PLUGIN_NAMES.length]!;
      case 'agentName':
        return 'agent';
      case 'badName':
        return c?.invalidUtf8 ? BAD_PLACEHOLDER : `*${HOSTILE_MARK} \n${i}`;
      case 'otherVmName':
        return s.others[i % Math.max(1, s.others.length)] ?? 'good-0';
      default:
        return ['signal', 'process', 'oom', 'heartbeat'][i % 4]!;
    }
  };
  const big = c?.bigStrings ? HOSTILE_MARK.repeat(20_000) : '';
  const loaded: pb.ILoadedProbe[] = Array.from({ length: c?.loadedCount ?? 1 }, (_, i) => ({
    handle: i + 1,
    name: name(i),
    instance: i,
    version: c?.invalidUtf8 ? BAD_PLACEHOLDER : `${HOSTILE_MARK}${big}`,
    events: [
      { id: 1, name: claim === 'hostPlugin' ? 'crashed' : 'signal' },
      { id: 2, name: claim === 'hostPlugin' ? 'agent-lost' : `${HOSTILE_MARK}-event` },
    ],
  }));
  return {
    hello: {
      protocolVersion: c?.version ?? PROTOCOL_VERSION,
      agentVersion: c?.invalidUtf8 ? BAD_PLACEHOLDER : `${HOSTILE_MARK}-agent${big}`,
      kernelRelease: claim === 'otherVmName' ? (s.others[0] ?? 'good-0') : HOSTILE_MARK,
      bootId:
        claim === 'otherBoot' && other ? other.bootId : claim === 'otherVmName' ? (s.others[0] ?? 'good-0') : `${HOSTILE_MARK}-${s.vm}`,
      agentPid: claim === 'otherBoot' && other ? other.pid : 4242,
      hostname: claim === 'otherVmName' ? (s.others[0] ?? 'good-0') : HOSTILE_MARK,
      lastSeq: s.seq,
      firstUnackedSeq: s.seq + 1,
      loaded,
    },
  };
}

export function helloFrame(c: Extract<HostileCase, { k: 'hello' }> | null, s: LinkState, n = 0): Buffer {
  const f = frameOf(helloMessage(c, s, n));
  // The CRC covers the payload: swap first, then frame again.
  if (!c?.invalidUtf8) return f;
  const payload = swapBytes(Buffer.from(encodeMessage(helloMessage(c, s, n))), BAD_PLACEHOLDER, badUtf8());
  return encodeFrame(payload);
}

function seqList(mode: Seqs, n: number, s: LinkState): number[] {
  const out: number[] = [];
  switch (mode) {
    case 'next':
      for (let i = 0; i < n; i++) out.push(++s.seq);
      break;
    case 'replay':
      for (let i = 0; i < n; i++) out.push(Math.max(1, s.seq - n + 1 + i));
      break;
    case 'decreasing':
      for (let i = 0; i < n; i++) out.push(Math.max(1, s.seq + n - i));
      s.seq += n;
      break;
    case 'huge':
      // beyond 2^53 (no longer exact as a double), and the largest uint64
      out.push(2 ** 53 + 7, 2 ** 63, 2 ** 64 - 1);
      break;
    case 'gap':
      s.seq += 1000;
      for (let i = 0; i < n; i++) out.push(++s.seq);
      break;
    case 'dupInBatch':
      for (let i = 0; i < n; i++) out.push(i % 2 === 0 ? ++s.seq : s.seq);
      break;
    case 'zero':
      for (let i = 0; i < n; i++) out.push(0);
      break;
  }
  return out;
}

/** One record's bytes; a bad payload keeps a well-formed header around a body that does not decode. */
function recordBytes(seq: number, handle: number, field: number, bad: boolean, invalidUtf8: boolean): Buffer {
  const now = Math.round(performance.now() * 1e6);
  const comm = invalidUtf8 ? BAD_PLACEHOLDER : HOSTILE_MARK;
  const base: pb.IRecord = { seq, monoNs: now, wallNs: Date.now() * 1e6, handle, eventId: 1 + (seq % 3) };
  if (bad) {
    const head = Buffer.from(v1.Record.encode(base).finish());
    // field `field`, wire type 2, a body of bytes that are no message (a truncated varint, a bad wire type)
    const body = Buffer.from([0xff, 0xff, 0xff, 0x0f, 0x07, ...Buffer.from(HOSTILE_MARK)]);
    const tag = Buffer.alloc(8);
    const t = writeVarint(tag, 0, (field << 3) | 2);
    const len = Buffer.alloc(5);
    const l = writeVarint(len, 0, body.length);
    return Buffer.concat([head, tag.subarray(0, t), len.subarray(0, l), body]);
  }
  const task = { pid: 7, comm };
  const bodies: Record<number, pb.IRecord> = {
    10: { signal: { sig: 11, code: 1, target: task, sender: task, senderIsKernel: true } },
    11: { oom: { victim: task, memcg: comm, constraint: comm } },
    12: { exec: { task, filename: comm } },
    13: { exit: { task, exitCode: 3, codeKnown: true, filename: comm } },
    14: { fork: { parent: task, child: task } },
    15: { psi: { resource: comm, kind: comm, stallUs: 1 } },
    16: { kprobe: { name: comm, symbol: comm, task, fields: [{ name: comm, str: comm }] } },
    17: { heartbeat: { count: seq, intervalMs: 1000 } },
    18: { loss: { count: 2 ** 64 - 1, source: 7 as never } },
    19: { probeFault: {} },
    20: { generic: {} },
  };
  const rec = Buffer.from(v1.Record.encode({ ...base, ...(bodies[field] ?? {}) }).finish());
  return invalidUtf8 ? swapBytes(rec, BAD_PLACEHOLDER, badUtf8()) : rec;
}

function recordsFrame(c: Extract<HostileCase, { k: 'records' }>, s: LinkState): Buffer {
  const seqs = seqList(c.seqs, c.n, s);
  return encodeBatchFrame(seqs.map((q) => recordBytes(q, c.handle, c.payloadKind, c.badPayload, c.invalidUtf8)));
}

function validRecordsFrame(s: LinkState, seqs: Seqs = 'next', n = 4): Buffer {
  return recordsFrame({ k: 'records', seqs, n, handle: 1, payloadKind: 10, badPayload: false, invalidUtf8: false }, s);
}

/** The varint of a number up to 2^35 - 1 (the decoder's limit), as bytes. */
function varintBytes(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return Buffer.from(out);
}

export interface CaseWrites {
  /** each written separately, in order */
  writes: Buffer[];
  /** stop reading the link for this long (ms) before writing */
  pauseReadMs?: number;
  /** end the link after writing */
  close?: boolean;
}

/** The writes of one case on a link in state `s` (which it updates). */
export function caseWrites(c: HostileCase, s: LinkState): CaseWrites {
  switch (c.k) {
    case 'bytes': {
      const writes: Buffer[] = [];
      const per = Math.max(1, Math.ceil(c.data.length / c.writes));
      for (let i = 0; i < c.data.length; i += per) writes.push(Buffer.from(c.data.subarray(i, i + per)));
      return { writes };
    }
    case 'garbageThenFrame':
      return { writes: [Buffer.concat([Buffer.from(c.garbage), validRecordsFrame(s, c.seqs)])] };
    case 'badCrc': {
      const f = validRecordsFrame(s);
      const at = FRAME_MARKER.length + 2 + (c.flip % (f.length - FRAME_MARKER.length - 2));
      f[at] = (f[at]! ^ 0x5a) & 0xff;
      return { writes: [f] };
    }
    case 'badLength': {
      const header = Buffer.concat([FRAME_MARKER, varintBytes(c.declared), Buffer.alloc(4)]);
      return { writes: [Buffer.concat([header, Buffer.from(c.actual)])] };
    }
    case 'truncated': {
      const f = validRecordsFrame(s);
      const part = f.subarray(0, 1 + (c.cut % (f.length - 1)));
      return { writes: c.thenValid ? [part, validRecordsFrame(s)] : [part] };
    }
    case 'hugeLength':
      return { writes: [Buffer.concat([FRAME_MARKER, varintBytes(c.len), Buffer.alloc(4), Buffer.from(c.tail)])] };
    case 'bigPartial': {
      // a frame of the largest allowed size, most of it sent and the rest never: the manager
      // holds it (at most maxFrameBytes) until later bytes show it is broken
      const header = Buffer.concat([FRAME_MARKER, varintBytes(MAX_FRAME), Buffer.alloc(4)]);
      return { writes: [header, Buffer.alloc(Math.min(c.have, MAX_FRAME - 1), 0x41)] };
    }
    case 'flood': {
      const one = (i: number): Buffer => {
        switch (c.what) {
          case 'ping':
            return frameOf({ reqId: i + 1, ping: { nonce: i, sentMonoNs: 1 } });
          case 'records':
            return validRecordsFrame(s, 'next', 1);
          case 'unsolicited':
            return frameOf({ reqId: 1_000_000 + i, pong: { nonce: i } });
          case 'hello':
            return helloFrame(null, s, i);
        }
      };
      const frames = Array.from({ length: c.frames }, (_, i) => one(i));
      if (!c.smallWrites) return { writes: [Buffer.concat(frames)] };
      // the same bytes a few at a time
      const all = Buffer.concat(frames);
      const writes: Buffer[] = [];
      for (let i = 0; i < all.length && writes.length < 2000; i += 7) writes.push(all.subarray(i, i + 7));
      if (writes.length === 2000) writes.push(all.subarray(2000 * 7));
      return { writes };
    }
    case 'hello': {
      const f = helloFrame(c, s);
      if (c.version === PROTOCOL_VERSION) return { writes: [f] };
      return { writes: [f], close: false };
    }
    case 'records':
      return { writes: [recordsFrame(c, s)] };
    case 'unknownMessage': {
      const key = varintBytes((c.field << 3) | c.wire);
      const body = c.wire === 0 ? varintBytes(c.field) : Buffer.concat([varintBytes(HOSTILE_MARK.length), Buffer.from(HOSTILE_MARK)]);
      return { writes: [encodeFrame(Buffer.concat([key, body]))] };
    }
    case 'request': {
      const r = c.reqId;
      const bodies: Record<typeof c.body, pb.IFrame> = {
        loadProbe: { reqId: r, loadProbe: { module: { manifest: Buffer.from('{}'), code: Buffer.from(HOSTILE_MARK) }, instances: 1 } },
        unloadProbe: { reqId: r, unloadProbe: { name: 'signal' } },
        setParams: { reqId: r, setParams: { handle: 1, params: [{ name: 'x', value: HOSTILE_MARK }] } },
        listProbes: { reqId: r, listProbes: {} },
        ping: { reqId: r, ping: { nonce: r } },
        ack: { reqId: r, ack: { seq: r } },
        helloAck: { reqId: r, helloAck: { protocolVersion: 1, ackedSeq: r } },
      };
      return { writes: [frameOf(bodies[c.body])] };
    }
    case 'response': {
      const r = c.reqId;
      const probe = { handle: 9, name: 'libvirt', events: [{ id: 1, name: 'crashed' }] };
      const bodies: Record<typeof c.body, pb.IFrame> = {
        loadResult: { reqId: r, loadResult: { ok: true, loaded: [probe] } },
        pong: { reqId: r, pong: { nonce: r } },
        probeList: { reqId: r, probeList: { loaded: [probe] } },
        unloadResult: { reqId: r, unloadResult: { ok: true, unloaded: [1, 2, 3] } },
        setParamsResult: { reqId: r, setParamsResult: { ok: true, probe } },
        error: { reqId: r, error: { code: `${HOSTILE_MARK}_CODE`, message: HOSTILE_MARK.repeat(100) } },
      };
      return { writes: [frameOf(bodies[c.body])] };
    }
    case 'stopReading':
      return { writes: Array.from({ length: c.hellos }, (_, i) => helloFrame(null, s, i)), pauseReadMs: c.ms };
    case 'close':
      return { writes: c.midFrame ? [validRecordsFrame(s).subarray(0, 9)] : [], close: true };
  }
}
