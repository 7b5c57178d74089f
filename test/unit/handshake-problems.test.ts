// What goes wrong before or during the handshake is named with its own code: garbage, an
// oversized frame, a bad CRC, a hello in a protocol version this host does not speak, a hello
// too large to be one (a 64 KiB probe name). A GuestSession links to a unix socket behind which
// a peer writes exactly that; its 'protocolError' and 'linkFailed' events must carry the code,
// never a bare "link closed before the handshake" / handshake timeout.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GuestSession } from '../../host/channel/guest-session.js';
import { PROTOCOL_VERSION, encodeMessage, type pb } from '../../proto/codec.js';
import { ErrorCode, type VesperError } from '../../proto/errors.js';
import { FRAME_MARKER, encodeFrame, writeVarint } from '../../proto/frame.js';
import { waitFor } from '../helpers/wait.js';

function hello(o: Partial<pb.IHello> = {}): Buffer {
  return encodeFrame(
    encodeMessage({
      hello: {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: 'test',
        kernelRelease: 'test',
        bootId: 'boot-1',
        agentPid: 42,
        hostname: 'peer',
        lastSeq: 0,
        firstUnackedSeq: 1,
        ...o,
      },
    }),
  );
}

/** a frame header announcing `len` bytes (no payload behind it) */
function header(len: number): Buffer {
  const b = Buffer.alloc(4 + 5 + 4);
  FRAME_MARKER.copy(b, 0);
  const pos = writeVarint(b, 4, len);
  return b.subarray(0, pos + 4);
}

const cases: Array<{ name: string; writes: () => Buffer[]; code: string; closeAfter?: boolean }> = [
  {
    name: 'garbage',
    writes: () => [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(4))],
    code: ErrorCode.FRAME_GARBAGE,
    closeAfter: true,
  },
  { name: 'an oversized frame', writes: () => [header(64 << 20), Buffer.alloc(1024)], code: ErrorCode.FRAME_TOO_LARGE, closeAfter: true },
  {
    name: 'a frame with a bad CRC',
    writes: () => {
      const f = hello();
      f[f.length - 1]! ^= 0xff;
      return [f];
    },
    code: ErrorCode.FRAME_CRC,
    closeAfter: true,
  },
  {
    name: 'a hello in another protocol version',
    writes: () => [hello({ protocolVersion: PROTOCOL_VERSION + 7 })],
    code: ErrorCode.PROTOCOL_VERSION,
  },
  {
    name: 'a hello with a 64 KiB probe name',
    writes: () => [hello({ loaded: [{ handle: 1, name: 'p'.repeat(64 * 1024), instance: 0, version: '1.0.0' }] })],
    code: ErrorCode.PROTOCOL_UNEXPECTED,
  },
];

describe('problems before the handshake', () => {
  let dir = '';
  let server: Server | null = null;
  let session: GuestSession | null = null;
  afterEach(() => {
    session?.stop();
    server?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const c of cases)
    it(`names ${c.name} (${c.code}), not a silent agent`, async () => {
      dir = mkdtempSync(join(tmpdir(), 'vesper-hs-'));
      const sock = join(dir, 'peer.sock');
      const peers: Socket[] = [];
      server = createServer((s) => {
        peers.push(s);
        s.on('error', () => undefined);
        s.on('data', () => undefined);
        for (const b of c.writes()) s.write(b);
        if (c.closeAfter) setTimeout(() => s.end(), 100);
      });
      await new Promise<void>((r) => server!.listen(sock, r));
      const problems: VesperError[] = [];
      const failed: VesperError[] = [];
      session = new GuestSession({
        socket: sock,
        module: () => ({}),
        handshakeTimeoutMs: 1500,
        minBackoffMs: 100,
        maxBackoffMs: 200,
      });
      session.on('protocolError', (e) => problems.push(e));
      session.on('linkFailed', (e) => failed.push(e));
      session.start();
      await waitFor('two failed links', () => failed.length >= 2, 15_000, 20);
      session.stop();
      expect(problems.map((p) => p.code)).toContain(c.code);
      // every failed link is named by the problem, each time
      for (const f of failed) expect(f.code).toBe(c.code);
      expect(failed[0]!.message).toMatch(/before the handshake/);
      for (const p of peers) p.destroy();
    }, 30_000);
});
