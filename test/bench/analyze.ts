// `analyze.*`: `vesper analyze --last` on a VM with 1,000,000 stored events, through the code
// path vesperd answers with (the store's query for the last failure and for its window, the
// analysis, the JSON text of the reply).
//
// The store is a real file (WAL, as vesperd keeps it) filled with 8 hours of a busy guest: a
// heartbeat a second, 16 short-lived processes a second (exec and exit records, as the process
// probe sends them), memory pressure now and then, the host's libvirt and channel events, and a
// few failures on the way (a segfault, an OOM kill, a hang). The last failure, a segfault, is
// 90 s before the newest event: an operator asking right after the alert.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_MAX_FRAME_BYTES } from '../../proto/api-codec.js';
import { v1, type pb } from '../../proto/codec.js';
import { analysisJson, analyzeFromStore } from '../../host/analysis/analyze.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { RecordEvent } from '../../host/notify/record-event.js';
import { EventStore } from '../../host/store/event-store.js';
import { mono, pct, round, type Metrics } from './stats.js';

const VM = 'bench-vm';
const TOTAL = 1_000_000;
const BATCH = 1000;
const RUNS = 20;
const START_US = Date.UTC(2026, 10, 22, 0, 0, 0) * 1000;
const SKEW_US = 1_500_000; // the guest's clock runs 1.5 s ahead
const RUN = 'bench-boot/311';

/** A small deterministic PRNG (transit jitter, pids). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

class Filler {
  private seq = 0;
  private readonly rand = prng(7);
  readonly pending: VesperEvent[] = [];
  count = 0;

  constructor(private readonly store: EventStore) {}

  /** Records of one moment, sent in time order (the agent numbers them as it reads them). */
  private second: Array<{ us: number; plugin: string; event: string; body: pb.IRecord }> = [];

  guest(us: number, plugin: string, event: string, body: pb.IRecord): void {
    this.second.push({ us, plugin, event, body });
  }

  /** Numbers and sends the records collected since the last call, in time order. */
  send(): void {
    this.second.sort((a, b) => a.us - b.us);
    for (const { us, plugin, event, body } of this.second) {
      const seq = ++this.seq;
      const guestUs = us + SKEW_US;
      const rec = v1.Record.encode({
        seq,
        monoNs: (us - START_US) * 1000,
        wallNs: guestUs * 1000,
        handle: 1,
        eventId: 1,
        ...body,
      }).finish();
      const hostUs = us + 1000 + Math.floor(this.rand() * 4000);
      this.push(new RecordEvent(VM, plugin, 0, event, guestUs, hostUs, { agentRun: RUN, seq }, rec));
    }
    this.second = [];
  }

  host(us: number, plugin: string, event: string, payload: Record<string, unknown>): void {
    this.push({ vm: VM, plugin, instance: 0, event, guestTimeUs: null, hostTimeUs: us, source: null, payload, disposition: 'notify' });
  }

  private push(e: VesperEvent): void {
    e.disposition ??= 'notify';
    this.pending.push(e);
    this.count++;
    if (this.pending.length >= BATCH) this.append();
  }

  /** Stores what is pending; the store keeps host times from going backwards along ids. */
  private append(): void {
    if (this.pending.length) this.store.append(this.pending.splice(0));
  }

  flush(): void {
    this.send();
    this.append();
  }
}

/** Fills the store; returns the host time of the last failure. */
export function fill(store: EventStore): number {
  const f = new Filler(store);
  const svc = { pid: 812, comm: 'app-server' };
  let pid = 1000;
  let lastFailureUs = 0;
  const stopAt = new Map<number, string>();
  // Failures at 2 h, 4 h and 6 h; the last is placed once the total is near.
  stopAt.set(2 * 3600, 'segv');
  stopAt.set(4 * 3600, 'oom');
  stopAt.set(6 * 3600, 'hang');
  let lastPlaced = false;
  f.host(START_US, 'libvirt', 'started', { libvirtEvent: 'lifecycle', event: 'Started', reason: 'Booted' });
  f.host(START_US + 9_000_000, 'channel', 'agent-connected', {
    agentRestarted: true,
    repushed: ['heartbeat', 'process', 'signal', 'oom', 'psi'],
    bootId: 'bench-boot',
    agentPid: 311,
  });
  for (let sec = 10; f.count < TOTAL; sec++) {
    const base = START_US + sec * 1_000_000;
    const failure = stopAt.get(sec) ?? (!lastPlaced && f.count >= TOTAL - 90 * 35 ? 'segv' : undefined);
    if (failure === 'hang') {
      f.host(base + 3_000_000, 'libvirt', 'watchdog', { libvirtEvent: 'watchdog', action: 'none' });
      f.host(base + 3_100_000, 'channel', 'heartbeat-lost', { silentMs: 3100, intervalMs: 1000 });
      f.host(base + 12_000_000, 'channel', 'heartbeat-back', { silentMs: 12_000 });
      sec += 12; // userspace was frozen: nothing from the guest meanwhile
      continue;
    }
    f.guest(base, 'heartbeat', 'beat', { heartbeat: { count: sec, intervalMs: 1000, delayMs: 0.3 } });
    for (let i = 0; i < 16; i++) {
      const t = { pid: ++pid, comm: i % 2 ? 'sh' : 'curl' };
      const at = base + 20_000 + i * 60_000;
      f.guest(at, 'process', 'exec', { exec: { task: t, filename: `/usr/bin/${t.comm}`, oldPid: t.pid } });
      f.guest(at + 15_000, 'process', 'exit', {
        exit: { task: t, exitCode: 0, signal: 0, codeKnown: true, filename: `/usr/bin/${t.comm}` },
      });
    }
    if (sec % 60 === 0)
      f.guest(base + 500_000, 'psi', 'pressure', {
        psi: {
          resource: 'memory',
          kind: 'some',
          stallUs: 120_000,
          windowUs: 1_000_000,
          thresholdUs: 100_000,
          avg10: 2.5,
          source: '/proc/pressure/memory',
        },
      });
    if (failure === 'segv') {
      const at = base + 990_000;
      f.guest(at, 'signal', 'signal', {
        signal: { sig: 11, code: 1, result: 0, group: false, target: svc, sender: svc, senderIsKernel: true },
      });
      f.guest(at + 3000, 'process', 'exit', {
        exit: { task: svc, exitCode: 0, signal: 11, codeKnown: true, filename: '/usr/sbin/app-server' },
      });
      lastFailureUs = at;
      if (f.count >= TOTAL - 90 * 35) lastPlaced = true;
    } else if (failure === 'oom') {
      const hog = { pid: ++pid, comm: 'batch-job' };
      const at = base + 995_000;
      f.guest(at, 'oom', 'oom_kill', {
        oom: {
          victim: hog,
          totalVmKb: 900_000,
          anonRssKb: 850_000,
          fileRssKb: 2000,
          memcg: '/batch',
          taskMemcg: '/batch',
          constraint: 'CONSTRAINT_MEMCG',
          trigger: hog,
          figuresComplete: true,
        },
      });
      f.guest(at + 100, 'signal', 'signal', {
        signal: { sig: 9, code: 128, result: 0, group: true, target: hog, sender: hog, senderIsKernel: true },
      });
      f.guest(at + 2000, 'process', 'exit', { exit: { task: hog, exitCode: 0, signal: 9, codeKnown: true } });
    }
    f.send();
  }
  f.flush();
  return lastFailureUs;
}

export async function analyzeBench(m: Metrics, o: { log?: (s: string) => void } = {}): Promise<void> {
  const log = o.log ?? ((s: string) => console.error(s));
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-analyze-'));
  const store = EventStore.open(join(dir, 'events.db'), { sync: 'normal' });
  try {
    const t0 = mono();
    const lastUs = fill(store);
    store.close(); // and open it again, as vesperd would find it: indexed, statistics current
    const s = EventStore.open(join(dir, 'events.db'), { sync: 'normal' });
    try {
      const stats = s.vmStats(VM);
      log(`analyze: ${stats.events} events stored for ${VM} in ${round((mono() - t0) / 1e9, 1)} s`);
      const times: number[] = [];
      let last = analyzeFromStore(s, { vm: VM, last: true });
      for (let i = 0; i < RUNS; i++) {
        const a0 = mono();
        last = analyzeFromStore(s, { vm: VM, last: true });
        analysisJson(last, API_MAX_FRAME_BYTES - 64 * 1024);
        times.push((mono() - a0) / 1e6);
        await new Promise((r) => setImmediate(r));
      }
      const v = last.verdicts[0];
      if (!v || v.kind !== 'app-crash' || Math.abs(last.anchor.atUs - lastUs) > 10_000_000)
        throw new Error(`analyze bench: expected the last segfault as the first verdict, got ${JSON.stringify(v ?? null)}`);
      m['analyze.stored_events'] = stats.events;
      m['analyze.window_events'] = last.eventCount;
      m['analyze.ms.p50'] = round(pct(times, 50), 1);
      m['analyze.ms.max'] = round(Math.max(...times), 1);
      m['analyze.runs'] = RUNS;
    } finally {
      s.close();
    }
  } finally {
    store.close(); // a no-op once closed
    rmSync(dir, { recursive: true, force: true });
  }
}
