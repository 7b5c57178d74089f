// ctx.kmsg(handler, { match }): the kernel log lines a probe does not want are dropped on the
// main thread, before they cross to the probe's worker (the OOM probe wants four kinds of line
// out of a log that a busy kernel writes many of). The kernel log here is a stand-in fed by the
// test; the runtime and the worker are real.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { KmsgSource } from '../../guest-agent/kernel/kmsg.js';
import { WallClock } from '../../guest-agent/kernel/proc.js';
import { ProbeRuntime } from '../../guest-agent/modules/runtime.js';
import { TrustedKeys } from '../../guest-agent/modules/verify.js';
import { loadOrCreateHostKey, type HostKey } from '../../host/keys.js';
import { signModule } from '../../host/probes/package.js';
import type { KmsgLine } from '../../contract/probe-api.js';
import type { pb } from '../../proto/codec.js';
import { ErrorCode } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { sleep, waitFor } from '../helpers/wait.js';

let tmp: string;
let key: HostKey;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vesper-kmsg-'));
  key = loadOrCreateHostKey(join(tmp, 'host'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

class FakeKmsg {
  readonly subs = new Set<(l: KmsgLine) => void>();
  seq = 0;
  subscribe(fn: (l: KmsgLine) => void): () => Promise<void> {
    this.subs.add(fn);
    return async () => {
      this.subs.delete(fn);
    };
  }
  write(text: string): void {
    const l: KmsgLine = { seq: this.seq++, ts: this.seq, level: 6, text };
    for (const s of this.subs) s(l);
  }
}

const mod = (code: string): pb.ILoadProbe => ({
  module: signModule(
    {
      manifestBytes: Buffer.from(
        JSON.stringify({
          name: 'klog',
          version: '1.0.0',
          agent: '>=0.0.0',
          description: 'test probe',
          maxInstances: 1,
          events: [{ id: 1, name: 'note', payload: 'generic', description: '' }],
          params: [],
        }),
      ),
      code: Buffer.from(code),
    },
    key,
  ),
});

let rt: ProbeRuntime | null = null;
afterEach(async () => {
  await rt?.stopAll();
  rt = null;
});

function start(kmsg: FakeKmsg, recs: pb.IRecord[]): ProbeRuntime {
  const keys = new TrustedKeys();
  keys.add(key.publicPem, 'host.pub');
  rt = new ProbeRuntime({
    agentVersion: VESPER_VERSION,
    tracefs: null,
    tracefsWhy: 'no tracefs in this test',
    kmsg: kmsg as unknown as KmsgSource,
    clock: new WallClock(),
    caps: { tracefs: false, kprobeEvents: false, psi: false, cgroupV2: false, kmsg: true },
    keys,
    log: pino({ level: 'silent' }),
    append: (rec) => {
      recs.push(rec);
      return true;
    },
    instancePrefix: 'vesper.test.',
    traceBufferKb: 64,
    loopStallMs: 600,
    quarantineFile: join(tmp, 'q'),
    quarantined: new Map(),
  });
  return rt;
}

const notes = (recs: pb.IRecord[]) => recs.filter((r) => r.generic).map((r) => r.generic!.fields![0]!.str);
const code = (opts: string) => `export default { setup(ctx) {
  ctx.kmsg((l) => ctx.emit('note', { generic: { fields: [{ name: 'text', str: l.text }] } })${opts});
} };`;

describe('kernel log filter', () => {
  it('hands the probe only the lines that contain one of its strings', async () => {
    const kmsg = new FakeKmsg();
    const recs: pb.IRecord[] = [];
    await start(kmsg, recs).load(mod(code(", { match: ['oom-kill:', 'Killed process '] }")));
    expect(kmsg.subs.size).toBe(1);
    for (const t of [
      'usb 1-1: new device',
      'oom-kill:constraint=CONSTRAINT_NONE,pid=7',
      'eth0: link up',
      'Out of memory: Killed process 7 (hog)',
    ])
      kmsg.write(t);
    await waitFor('two notes', () => notes(recs).length >= 2, 5000);
    await sleep(100); // nothing else comes
    expect(notes(recs)).toEqual(['oom-kill:constraint=CONSTRAINT_NONE,pid=7', 'Out of memory: Killed process 7 (hog)']);
  });

  it('without match, every line', async () => {
    const kmsg = new FakeKmsg();
    const recs: pb.IRecord[] = [];
    await start(kmsg, recs).load(mod(code('')));
    kmsg.write('a');
    kmsg.write('b');
    await waitFor('two notes', () => notes(recs).length >= 2, 5000);
    expect(notes(recs)).toEqual(['a', 'b']);
  });

  it('a match that is not a list of non-empty strings fails the load and attaches nothing', async () => {
    const kmsg = new FakeKmsg();
    const r = start(kmsg, []);
    await expect(r.load(mod(code(", { match: ['ok', ''] }")))).rejects.toMatchObject({ code: ErrorCode.PROBE_LOAD_FAILED });
    expect(kmsg.subs.size).toBe(0);
  });
});
