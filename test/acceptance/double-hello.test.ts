// A guest that restarted can say hello twice, less than a second apart, the second hello sent
// before vesperd's push reached it: in the Pacemaker race vesperd then pushed its probes twice,
// the agent refused the second push (VSP_PROBE_ALREADY_LOADED), and `vesper status` showed the
// heartbeat loaded: false while the agent ran it, for good. Here a real vesperd links through a
// libvirt test-driver domain's channel socket to a real agent in host mode, through a relay that
// does what the virtio-serial port did: it passes every frame and, 300 ms after the agent's
// hello, sends that hello again (the agent's own bytes, stale by then). vesperd and the agent
// must agree by themselves: the heartbeat loaded, in status, and only one copy in the agent.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalAgent } from '../../host/channel/local-agent.js';
import { decodeMessage } from '../../proto/codec.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';
import { VesperdProcess, writeVesperdConfig } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why =
  process.getuid?.() !== 0
    ? 'needs root (the API socket is given to a group; the agent reads tracefs)'
    : spawnSync('virsh', ['--version']).status !== 0
      ? 'needs virsh (the libvirt test driver)'
      : '';
if (why) console.warn(`SKIP double hello test: ${why}`);

interface Status {
  link: string;
  attached: Array<{ name: string; loaded: boolean }>;
}

/** vesperd's end of the channel: each link relayed to the agent, the first link's hello said twice. */
class DoubleHelloRelay {
  private server: Server | null = null;
  readonly socks: Socket[] = [];
  hellos = 0;
  replayed = 0;
  links = 0;

  constructor(
    readonly path: string,
    readonly agentSocket: string,
    readonly replayAfterMs: number,
  ) {}

  listen(): Promise<void> {
    this.server = createServer((host) => {
      const first = this.links++ === 0;
      const agent = connect({ path: this.agentSocket });
      this.socks.push(host, agent);
      host.on('error', () => undefined);
      agent.on('error', () => undefined);
      host.pipe(agent);
      host.on('close', () => agent.destroy());
      agent.on('close', () => host.destroy());
      const dec = new FrameDecoder({
        maxFrameBytes: 8 << 20,
        onFrame: (payload) => {
          const frame = encodeFrame(Buffer.from(payload));
          host.write(frame);
          if (decodeMessage(Buffer.from(payload)).body !== 'hello') return;
          this.hellos++;
          if (first && this.replayed === 0)
            setTimeout(() => {
              if (host.destroyed) return;
              this.replayed++;
              host.write(frame);
            }, this.replayAfterMs);
        },
        onError: () => undefined,
      });
      agent.on('data', (c: Buffer) => dec.push(c));
    });
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.path, () => resolve());
    });
  }

  close(): void {
    for (const s of this.socks) s.destroy();
    this.server?.close();
  }
}

describe.skipIf(Boolean(why))('a guest that says hello twice', () => {
  const dir = mkdtempSync('/tmp/vesperd-hello-');
  const vm = `dh-${process.pid}`;
  let agent: LocalAgent | null = null;
  let relay: DoubleHelloRelay | null = null;
  let d: VesperdProcess | null = null;

  afterAll(async () => {
    await d?.killAll();
    relay?.close();
    await agent?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('ends with vesperd and the agent agreeing: heartbeat loaded in status, one copy in the agent', async () => {
    agent = new LocalAgent({ protect: false });
    await agent.start();
    relay = new DoubleHelloRelay(join(dir, 'chan.sock'), agent.socket, 300);
    await relay.listen();
    const nodeXml = join(dir, 'node.xml');
    writeFileSync(
      nodeXml,
      `<node>
  <domain type='test'>
    <name>${vm}</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <channel type='unix'>
        <source mode='bind' path='${relay.path}'/>
        <target type='virtio' name='org.vesper.agent.0'/>
      </channel>
    </devices>
  </domain>
</node>
`,
    );
    const socket = join(dir, 'vesperd.sock');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: join(dir, 'events.db'),
      domains: [vm],
      more: {
        libvirt: { uri: `test://${nodeXml}` },
        attach: [{ vm, probes: [{ name: 'heartbeat', params: { interval_ms: '500' } }] }],
      },
    });
    d = new VesperdProcess(config, socket, join(agent.dir, 'keys'));
    await d.start();
    const status = (): Promise<Status> => d!.json<Status>(['status', vm]);
    await waitFor('the stale hello said again', () => relay!.replayed > 0, 30_000, 50);
    // well past the client's one-second hello coalescing and the pushes it makes
    await sleep(2500);
    const loaded = await waitFor(
      'status: heartbeat loaded',
      async () => {
        const s = await status();
        return s.link === 'connected' && s.attached.find((a) => a.name === 'heartbeat')?.loaded === true ? s : false;
      },
      15_000,
      250,
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}; last status ${JSON.stringify(await status())}\nvesperd log:\n${d!.log.slice(-4000)}`);
    });
    expect(loaded.attached.find((a) => a.name === 'heartbeat')?.loaded).toBe(true);
    // and it stays so (no push loop, no relink)
    await sleep(2000);
    const later = await status();
    expect(later.attached.find((a) => a.name === 'heartbeat')?.loaded).toBe(true);
    expect(relay.links).toBe(1);
    // the agent runs one heartbeat, not two
    const c = await agent.connect();
    try {
      const probes = await c.list();
      expect(probes.filter((p) => p.name === 'heartbeat')).toHaveLength(1);
    } finally {
      c.close();
    }
    // and its heartbeat records reach the store
    await waitFor(
      'heartbeat events stored',
      async () => (await d!.ok(['events', '--vm', vm, '--plugin', 'heartbeat', '-o', 'json'])).trim().length > 0,
      15_000,
      250,
    );
  }, 180_000);
});
