import { describe, expect, it } from 'vitest';
import { v1, type pb } from '../../proto/codec.js';
import { FastEncoder } from '../../proto/fast-encode.js';
import { mulberry32 } from './prng.js';

const same = (enc: FastEncoder, rec: pb.IRecord): void => {
  const ours = Buffer.from(enc.encode(rec));
  const theirs = Buffer.from(v1.Record.encode(rec).finish());
  expect(ours.toString('hex')).toBe(theirs.toString('hex'));
  expect(v1.Record.decode(ours)).toEqual(v1.Record.decode(theirs));
};

describe('FastEncoder', () => {
  const enc = new FastEncoder('Record');

  it('writes the same bytes as protobufjs for every payload kind', () => {
    const base = { seq: 123456789012, monoNs: 2 ** 52 + 7, wallNs: 1.795e18, handle: 3, eventId: 1 };
    same(enc, {
      ...base,
      signal: {
        sig: 11,
        code: 1,
        errno: 0,
        result: 0,
        group: false,
        target: { pid: 42, comm: 'vesper-demo-svc' },
        sender: { pid: 42, comm: 'x' },
        senderIsKernel: true,
      },
    });
    same(enc, { ...base, signal: { sig: 15, code: -6, target: { pid: 1, comm: 'ü→ünïcødé' } } });
    same(enc, {
      ...base,
      oom: { victim: { pid: 9, comm: 'tail' }, totalVmKb: 51748, anonRssKb: 48896, oomScoreAdj: -1000, memcg: '/a', figuresComplete: true },
    });
    same(enc, { ...base, exec: { task: { pid: 5, comm: 'sh' }, filename: '/usr/bin/' + 'x'.repeat(300), oldPid: 5 } });
    same(enc, { ...base, exit: { task: { pid: 5, comm: 'sh' }, exitCode: 3, signal: 0, codeKnown: true, filename: '', thread: false } });
    same(enc, {
      ...base,
      psi: {
        resource: 'memory',
        kind: 'some',
        stallUs: 12345,
        windowUs: 1000000,
        thresholdUs: 1000,
        avg10: 0.25,
        source: '/proc/pressure/memory',
      },
    });
    same(enc, {
      ...base,
      kprobe: {
        name: 'k',
        symbol: 's',
        task: { pid: 1, comm: 'c' },
        fields: [
          { name: 'a', int: -5 },
          { name: 'b', uint: 2 ** 40 },
          { name: 'c', str: 'z' },
        ],
      },
    });
    same(enc, { ...base, heartbeat: { count: 7, intervalMs: 500, delayMs: 1.5 } });
    same(enc, { ...base, loss: { source: 1, count: 4000, firstMonoNs: 1, lastMonoNs: 2, handle: 3, cpu: 1 } });
    same(enc, {
      ...base,
      probeFault: { handle: 2, probe: 'p', instance: 0, code: 'VSP_PROBE_CRASHED', message: 'm'.repeat(20000), unloaded: true },
    });
    same(enc, { ...base, generic: { fields: [] } });
    same(enc, { seq: 1 });
  });

  it('matches protobufjs on random records (bounded)', () => {
    const rng = mulberry32(7);
    const int = (lo: number, hi: number) => rng.int(lo, hi);
    const str = () => Array.from({ length: int(0, 200) }, () => String.fromCharCode(int(32, 0x3000))).join('');
    for (let i = 0; i < 2000; i++) {
      same(enc, {
        seq: int(0, 2 ** 53 - 1),
        monoNs: int(0, 2 ** 53 - 1),
        wallNs: int(0, 2 ** 40),
        handle: int(0, 2 ** 32 - 1),
        eventId: int(0, 1000),
        signal: {
          sig: int(-(2 ** 31), 2 ** 31 - 1),
          code: int(-200, 200),
          target: { pid: int(0, 4e6), comm: str() },
          sender: { pid: int(-1, 10), comm: str() },
        },
      });
    }
  });
});
