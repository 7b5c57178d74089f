// Simulated guests for the manager benchmark, all in this one process: each listens on a unix
// socket and speaks the real agent protocol (hello, hello_ack, ping/pong, record batches with
// sequence numbers), sending RATE signal records a second stamped with the wall clock.
// argv: DIR COUNT RATE [BURST]. Tells the parent (IPC) once every socket listens.
// With RATE 0 and BURST, each guest instead sends BURST records as one storm, as fast as the
// link takes them (a real agent's ring draining after a burst of kernel events), in frames of
// 512 records encoded before the link comes up, and tells the parent 'sent' when it has.
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, decodeMessage, encodeMessage, v1 } from '../../proto/codec.js';
import { FrameDecoder, encodeFrame } from '../../proto/frame.js';

const [dir, countText, rateText] = process.argv.slice(2) as [string, string, string];
const count = Number(countText);
// ticks of 10 ms, or longer below 100 records/s: one record per tick then
const tickMs = Math.max(10, Math.round(1000 / Math.max(1, Number(rateText))));
const perTick = Math.max(1, Math.round((Number(rateText) * tickMs) / 1000));
const burst = Number(process.argv[5] ?? 0);
const BURST_FRAME_RECORDS = 512;

function burstFrames(): Buffer[] {
  const frames: Buffer[] = [];
  let seq = 1;
  while (seq <= burst) {
    const recs: Uint8Array[] = [];
    for (let k = 0; k < BURST_FRAME_RECORDS && seq <= burst; k++, seq++)
      recs.push(
        v1.Record.encode({
          seq,
          monoNs: 1e9 + seq,
          wallNs: 1.7e18 + seq * 1000,
          handle: 1,
          eventId: 1,
          signal: { sig: 10, code: 0, result: 1, group: true, target: { pid: 1234, comm: 'sleep' }, sender: { pid: 999, comm: 'bench' } },
        }).finish(),
      );
    frames.push(encodeBatchFrame(recs));
  }
  return frames;
}
const frames = burst > 0 ? burstFrames() : [];

function sendBurst(s: Socket): void {
  let i = 0;
  const more = (): void => {
    while (i < frames.length) if (!s.write(frames[i++] as Buffer)) return void s.once('drain', more);
    process.send?.('sent');
  };
  more();
}

interface Sim {
  socket: Socket | null;
  seq: number;
  ready: boolean;
}
const sims: Sim[] = [];
const wallNs = (): number => Math.round((performance.timeOrigin + performance.now()) * 1e6);

let listening = 0;
for (let i = 0; i < count; i++) {
  const sim: Sim = { socket: null, seq: 0, ready: false };
  sims.push(sim);
  const server = createServer((s) => {
    sim.socket = s;
    sim.ready = false;
    const send = (f: Parameters<typeof encodeMessage>[0]): void => void s.write(encodeFrame(encodeMessage(f)));
    const dec = new FrameDecoder({
      maxFrameBytes: 1 << 20,
      onError: () => s.destroy(),
      onFrame: (payload) => {
        const f = decodeMessage(payload);
        if (f.helloAck) {
          sim.seq = Number(f.helloAck.ackedSeq ?? 0);
          sim.ready = burst === 0;
          if (burst > 0 && sim.seq === 0) sendBurst(s);
        } else if (f.ping)
          send({
            reqId: f.reqId,
            pong: { nonce: f.ping.nonce, pingSentMonoNs: f.ping.sentMonoNs, recvMonoNs: Math.round(performance.now() * 1e6) },
          });
      },
    });
    s.on('data', (c: Buffer) => dec.push(c));
    s.on('error', () => undefined);
    s.on('close', () => (sim.socket = null));
    send({
      hello: {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: 'sim',
        bootId: `sim-${i}`,
        agentPid: i + 1,
        lastSeq: sim.seq,
        firstUnackedSeq: sim.seq + 1,
        loaded: [{ handle: 1, name: 'signal', instance: 0, events: [{ id: 1, name: 'signal' }] }],
      },
    });
  });
  server.listen(join(dir, `a${i}.sock`), () => {
    if (++listening === count) process.send?.('listening');
  });
}

if (burst === 0)
  setInterval(() => {
    for (const sim of sims) {
      if (!sim.socket || !sim.ready) continue;
      const recs: Uint8Array[] = [];
      for (let k = 0; k < perTick; k++)
        recs.push(
          v1.Record.encode({
            seq: ++sim.seq,
            monoNs: Math.round(performance.now() * 1e6),
            wallNs: wallNs(),
            handle: 1,
            eventId: 1,
            signal: { sig: 11, code: 1, target: { pid: 100, comm: 'demo' }, sender: { pid: 100, comm: 'demo' }, senderIsKernel: true },
          }).finish(),
        );
      sim.socket.write(encodeBatchFrame(recs));
    }
  }, tickMs);
