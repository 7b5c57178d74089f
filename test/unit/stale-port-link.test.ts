// A guest restored from a save (or migrated in) holds its virtio-serial link from before: it
// never saw the host leave, so it answers the new host's first ping with a pong and no hello.
// The host must hang up at once (the guest then sees the host go and says hello on the next
// link), not wait out the handshake timeout (10 s in vesperd, most of a resume's grace).
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { GuestSession } from '../../host/channel/guest-session.js';
import { PROTOCOL_VERSION, encodeMessage } from '../../proto/codec.js';
import type { VesperError } from '../../proto/errors.js';
import { encodeFrame } from '../../proto/frame.js';
import { waitFor } from '../helpers/wait.js';

const hello = encodeFrame(
  encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'b', agentPid: 7, lastSeq: 0, firstUnackedSeq: 1 } }),
);
const pong = encodeFrame(encodeMessage({ reqId: 0, pong: { nonce: 0 } }));

let cleanup: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanup.reverse()) c();
  cleanup = [];
});

it('a pong without a hello on a new link: hung up and linked again at once, the hello then answered', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-stale-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'agent.sock');
  let links = 0;
  const socks = new Set<Socket>();
  const server: Server = createServer((s) => {
    const n = ++links;
    socks.add(s);
    s.on('error', () => undefined);
    // The first link is the restored guest's old one: it answers the ping, says no hello.
    s.once('data', () => s.write(n === 1 ? pong : hello));
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanup.push(() => {
    for (const s of socks) s.destroy();
    server.close();
  });
  const s = new GuestSession({ socket: path, module: () => ({}), minBackoffMs: 50, handshakeTimeoutMs: 10_000 });
  const failed: VesperError[] = [];
  s.on('linkFailed', (e) => failed.push(e));
  const t0 = Date.now();
  s.start();
  cleanup.push(() => s.stop());
  await waitFor('connected', () => s.client !== null && !s.client.isClosed && s.agentRun === 'b/7', 3000, 10);
  expect(Date.now() - t0).toBeLessThan(3000);
  expect(links).toBe(2);
  expect(failed.map((e) => e.message).join(' ')).toContain('a link it already had');
});
