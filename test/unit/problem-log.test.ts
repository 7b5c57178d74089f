// A guest decides how many problems its link has; the manager's log must not follow. The
// ProblemLog alone, then through a real GuestLink on a real socket with a hostile agent behind it.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { ProblemLog } from '../../host/channel/problem-log.js';
import { GuestLink } from '../../host/daemon/guest-link.js';
import { IngestBatcher } from '../../host/daemon/ingest.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { PROTOCOL_VERSION, encodeMessage } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { encodeFrame } from '../../proto/frame.js';
import { sleep, waitFor } from '../helpers/wait.js';

interface Line {
  vm?: string;
  code?: string;
  msg: string;
  repeated?: Record<string, number>;
  total?: number;
}

function capture(): { lines: Line[]; log: { warn(o: object, m: string): void } } {
  const lines: Line[] = [];
  return { lines, log: { warn: (o, msg) => lines.push({ ...o, msg }) } };
}

describe('ProblemLog', () => {
  it('logs each kind once with the VM, caps the rest, and sums the repeats up in one line', () => {
    let now = 1_000_000;
    const c = capture();
    const p = new ProblemLog(c.log, 'web1', { now: () => now, burst: 10, perSecond: 2 });
    for (let i = 0; i < 100_000; i++) p.tell(new VesperError(ErrorCode.FRAME_CRC, `frame ${i} failed its CRC check`));
    // a guest's own error codes, each new: they take tokens, and then get summed up as well
    for (let i = 0; i < 1000; i++) p.tell(new VesperError(`GUEST_CODE_${i}`, 'x'.repeat(10_000)));
    expect(c.lines.length).toBe(10);
    expect(c.lines.every((l) => l.vm === 'web1')).toBe(true);
    expect(c.lines[0]).toMatchObject({ code: ErrorCode.FRAME_CRC, msg: 'channel problem' });
    expect(c.lines.filter((l) => l.code === ErrorCode.FRAME_CRC)).toHaveLength(1);
    // a guest's long text is cut
    expect(JSON.stringify(c.lines).length).toBeLessThan(10 * 400);
    now += 1000; // two more tokens: a new kind is told at once
    p.tell(new VesperError(ErrorCode.MESSAGE_DECODE, 'undecodable'));
    expect(c.lines.at(-1)).toMatchObject({ code: ErrorCode.MESSAGE_DECODE });
    p.close();
    const sum = c.lines.at(-1)!;
    expect(sum.msg).toBe('channel problems repeated');
    expect(sum.total).toBe(100_000 - 1 + 1000 - 9);
    expect(sum.repeated![ErrorCode.FRAME_CRC]).toBe(99_999);
  });
});

describe('GuestLink with a hostile agent', () => {
  it('writes a handful of log lines for a flood of bad frames, each naming the VM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-problems-'));
    const path = join(dir, 'agent.sock');
    const out: string[] = [];
    const log = pino(
      { level: 'info' },
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          out.push(...chunk.toString().split('\n').filter(Boolean));
          cb();
        },
      }),
    );
    let peer: Socket | null = null;
    const server = createServer((s) => {
      peer = s;
      s.on('error', () => undefined);
      s.write(encodeFrame(encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'hostile', agentPid: 1 } })));
      // 20,000 frames that fail their CRC, 3,000 unsolicited answers, 3,000 undecodable messages
      const bad = encodeFrame(Buffer.from('not a message at all'));
      bad[bad.length - 1] = bad[bad.length - 1]! ^ 0xff;
      s.write(Buffer.concat(Array.from({ length: 20_000 }, () => bad)));
      s.write(Buffer.concat(Array.from({ length: 3000 }, (_, i) => encodeFrame(encodeMessage({ reqId: 1000 + i, pong: { nonce: i } })))));
      s.write(Buffer.concat(Array.from({ length: 3000 }, () => encodeFrame(Buffer.from([0xff, 0xff, 0xff])))));
    });
    await new Promise<void>((r) => server.listen(path, r));
    const link = new GuestLink('hostile-vm', path, {
      key: loadOrCreateHostKey(join(dir, 'keys')),
      batcher: new IngestBatcher({ ingest: (evs) => ({ stored: evs.length, duplicates: 0 }) }),
      heldFor: () => 0,
      hostEvent: () => undefined,
      log,
      keepaliveMs: 60_000,
    });
    try {
      link.start();
      await waitFor('the link', () => link.state === 'connected', 10_000);
      await sleep(1500); // the flood read and told
      const warns = out.map((l) => JSON.parse(l) as Line & { level: number }).filter((l) => l.level >= 40);
      expect(warns.length).toBeGreaterThan(0);
      expect(warns.length).toBeLessThanOrEqual(10);
      expect(warns.every((l) => l.vm === 'hostile-vm')).toBe(true);
      expect(new Set(warns.map((l) => l.code))).toEqual(
        new Set([ErrorCode.FRAME_CRC, ErrorCode.PROTOCOL_UNEXPECTED, ErrorCode.MESSAGE_DECODE]),
      );
    } finally {
      link.stop();
      (peer as Socket | null)?.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('GuestLink with an agent whose link the host closes right after the handshake', () => {
  it('links again: the close that came with the hello is not lost', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-relink-'));
    const path = join(dir, 'agent.sock');
    const peers: Socket[] = [];
    const hello = (bootId: string): Buffer =>
      encodeFrame(encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId, agentPid: 1 } }));
    const server = createServer((s) => {
      peers.push(s);
      s.on('error', () => undefined);
      // the first link: a hello, and in the same write one the host refuses (it closes the link)
      s.write(peers.length === 1 ? Buffer.concat([hello('b1'), hello('x'.repeat(10_000))]) : hello('b1'));
    });
    await new Promise<void>((r) => server.listen(path, r));
    const link = new GuestLink('vm1', path, {
      key: loadOrCreateHostKey(join(dir, 'keys')),
      batcher: new IngestBatcher({ ingest: (evs) => ({ stored: evs.length, duplicates: 0 }) }),
      heldFor: () => 0,
      hostEvent: () => undefined,
      log: pino({ level: 'silent' }),
      keepaliveMs: 60_000,
      minBackoffMs: 50,
    });
    try {
      link.start();
      await waitFor('a second link', () => peers.length >= 2, 5000);
      await waitFor('connected', () => link.state === 'connected', 5000);
    } finally {
      link.stop();
      for (const p of peers) p.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
