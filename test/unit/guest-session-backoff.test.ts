// The reconnect backoff of a guest session: a guest that completes its handshake and hangs up
// must not be relinked every minBackoffMs (the backoff used to start again from its minimum
// after every handshake), and a link that stayed up a while is relinked promptly after it drops.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GuestSession } from '../../host/channel/guest-session.js';
import { PROTOCOL_VERSION, encodeMessage } from '../../proto/codec.js';
import { encodeFrame } from '../../proto/frame.js';
import { sleep, waitFor } from '../helpers/wait.js';

const hello = encodeFrame(encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'b', agentPid: 1 } }));

/** An agent at `path` that says hello on every link and hangs up after `holdMs(n)` (n: the link's number, from 1). */
async function agent(path: string, holdMs: (n: number) => number): Promise<{ server: Server; connects: number[]; closes: number[] }> {
  const connects: number[] = [];
  const closes: number[] = [];
  const socks = new Set<Socket>();
  const server = createServer((s) => {
    connects.push(Date.now());
    socks.add(s);
    s.on('error', () => undefined);
    s.on('close', () => socks.delete(s));
    s.write(hello);
    setTimeout(() => {
      closes.push(Date.now());
      s.destroy();
    }, holdMs(connects.length));
  });
  server.on('close', () => {
    for (const s of socks) s.destroy();
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { server, connects, closes };
}

let cleanup: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanup.reverse()) c();
  cleanup = [];
});

function setup(): string {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-backoff-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'agent.sock');
}

function session(socket: string, o: { stableLinkMs?: number } = {}): GuestSession {
  const s = new GuestSession({
    socket,
    module: () => {
      throw new Error('no probes here');
    },
    minBackoffMs: 50,
    maxBackoffMs: 1000,
    keepaliveMs: 0,
    ...o,
  });
  s.on('protocolError', () => undefined);
  s.on('linkFailed', () => undefined);
  cleanup.push(() => s.stop());
  return s;
}

describe('the reconnect backoff', () => {
  it('grows for a guest that says hello and hangs up, instead of relinking it every minBackoffMs', async () => {
    const path = setup();
    // each link answered and closed 20 ms later: past the handshake, so the session takes it for a link
    const a = await agent(path, () => 20);
    cleanup.push(() => a.server.close());
    const s = session(path);
    let connected = 0;
    s.on('connected', () => connected++);
    s.start();
    await sleep(1600);
    s.stop();
    // Backoff 50, 100, 200, 400, 800 ms (+20 ms up each time): 5 or 6 links in 1.6 s. Reset after each
    // handshake, it was one every ~70 ms: about 20.
    expect(connected).toBeGreaterThanOrEqual(3);
    expect(a.connects.length).toBeLessThanOrEqual(7);
    // and the gaps between links grow
    const gaps = a.connects.slice(1).map((t, i) => t - a.connects[i]!);
    expect(gaps[gaps.length - 1]!).toBeGreaterThan(3 * gaps[0]!);
  });

  it('starts again from its minimum once a link stayed up stableLinkMs', async () => {
    const path = setup();
    // four links that hang up at once (the backoff grows to 800 ms), then one that stays up 400 ms
    const a = await agent(path, (n) => (n === 5 ? 400 : 20));
    cleanup.push(() => a.server.close());
    const s = session(path, { stableLinkMs: 200 });
    s.start();
    await waitFor('the sixth link', () => a.connects.length >= 6, 5000, 10);
    s.stop();
    const before = a.connects[4]! - a.closes[3]!;
    const after = a.connects[5]! - a.closes[4]!;
    expect(before).toBeGreaterThanOrEqual(350); // 400 ms of backoff before the fifth link
    expect(after).toBeLessThan(200); // 50 ms after the stable one dropped
  });
});
