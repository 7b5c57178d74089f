// A guest's ingest budget: the token buckets on their own (a fake clock), then a link over a
// real unix socket that a simulated agent floods with records: read no faster than the budget,
// paused rather than dropped, every record delivered in order in the end.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../../host/channel/agent-client.js';
import { IngestBudget } from '../../host/channel/ingest-budget.js';
import { encodeBatchFrame } from '../../proto/batch.js';
import { PROTOCOL_VERSION, encodeMessage, v1 } from '../../proto/codec.js';
import { ErrorCode } from '../../proto/errors.js';
import { encodeFrame } from '../../proto/frame.js';
import { waitFor } from '../helpers/wait.js';

describe('the token buckets', () => {
  it('let a burst through, then ask for the time the excess takes at the rate', () => {
    let now = 0;
    const b = new IngestBudget({ bytesPerS: 1000, recordsPerS: 100, burstMs: 1000 }, () => now);
    expect(b.charge(500, 50)).toBe(0); // within the saved-up second
    expect(b.charge(500, 50)).toBe(0);
    expect(b.charge(200, 0)).toBeCloseTo(200); // 200 bytes over at 1000/s
    now += 200;
    expect(b.charge(0, 30)).toBeCloseTo(100); // bytes back at 0; 30 records over at 100/s, minus the 20 refilled
    now += 10_000;
    // a long quiet spell saves up one burst, not ten seconds' worth
    expect(b.charge(1000, 100)).toBe(0);
    expect(b.charge(1, 0)).toBeGreaterThan(0);
  });

  it('a rate of 0 is no limit', () => {
    const b = new IngestBudget({ bytesPerS: 0, recordsPerS: 0 });
    expect(b.unlimited).toBe(true);
    expect(b.charge(1e12, 1e9)).toBe(0);
    const bytesOnly = new IngestBudget({ bytesPerS: 0, recordsPerS: 10 }, () => 0);
    expect(bytesOnly.unlimited).toBe(false);
    expect(bytesOnly.charge(1e12, 5)).toBe(0);
  });
});

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** 250-byte records: 6,000 of them are several reads' worth, more than a socket buffer holds */
const FILE = `/${'x'.repeat(240)}`;

/** An agent that says hello, then (100 ms later, the handshake done) writes `total` records in batches of 100 as fast as the socket takes them. */
async function floodingAgent(total: number): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'vesper-budget-'));
  const path = join(dir, 'agent.sock');
  const socks = new Set<Socket>();
  const server: Server = createServer((s) => {
    socks.add(s);
    s.on('error', () => undefined);
    s.write(encodeFrame(encodeMessage({ hello: { protocolVersion: PROTOCOL_VERSION, bootId: 'b', agentPid: 1 } })));
    const frames: Buffer[] = [];
    for (let seq = 1; seq <= total; seq += 100) {
      const recs = [];
      for (let i = seq; i < seq + 100 && i <= total; i++)
        recs.push(Buffer.from(v1.Record.encode({ seq: i, monoNs: i, handle: 0, exec: { task: { pid: i }, filename: FILE } }).finish()));
      frames.push(encodeBatchFrame(recs));
    }
    // once the host has answered the hello (it writes a ping, then the hello's answer)
    setTimeout(() => s.write(Buffer.concat(frames)), 100);
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(() => {
    for (const s of socks) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return path;
}

describe('a link over its budget', () => {
  it('is read no faster than the budget, paused and never dropped: every record arrives, in order', async () => {
    const total = 6000;
    const path = await floodingAgent(total);
    const c = await AgentClient.connectUnix(path, { budget: { recordsPerS: 4000, bytesPerS: 0, burstMs: 250 } });
    cleanups.push(() => c.close());
    const errors: string[] = [];
    c.on('protocolError', (e) => errors.push(e.code));
    const seqs: number[] = [];
    c.on('batch', (rs) => {
      for (const r of rs) seqs.push(r.seq);
    });
    const t0 = performance.now();
    await waitFor('every record', () => seqs.length >= total, 10_000, 5);
    const ms = performance.now() - t0;
    // 250 ms of burst (and the read that spent it), the rest at 4,000/s: about a second. Unbudgeted,
    // all 6,000 come in a few reads (the test below).
    expect(ms).toBeGreaterThan(700);
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(c.throttles).toBeGreaterThan(0);
    expect(c.throttledMs).toBeGreaterThan(500);
    // told once for the link, however many times it was paused
    expect(errors.filter((e) => e === ErrorCode.INGEST_THROTTLED)).toHaveLength(1);
  });

  it('without a budget is read as fast as the agent writes', async () => {
    const total = 6000;
    const path = await floodingAgent(total);
    const c = await AgentClient.connectUnix(path, {});
    cleanups.push(() => c.close());
    let n = 0;
    c.on('batch', (rs) => (n += rs.length));
    const t0 = performance.now();
    await waitFor('every record', () => n >= total, 10_000, 5);
    expect(performance.now() - t0).toBeLessThan(900);
    expect(c.throttles).toBe(0);
  });
});
