// The probe runtime with real worker threads: each load's code runs in its own worker; what
// it attaches is owned and released by the main thread whatever becomes of the worker.
// No tracefs here (unit tests run unprivileged too): the attachments used are PSI watchers
// on /proc/pressure (skipped without PSI) and the synchronous context calls' errors.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KmsgSource } from '../../guest-agent/kernel/kmsg.js';
import { psiAvailable } from '../../guest-agent/kernel/pressure.js';
import { WallClock } from '../../guest-agent/kernel/proc.js';
import type { QuarantineEntry } from '../../guest-agent/modules/loop-watchdog.js';
import { readQuarantine } from '../../guest-agent/modules/loop-watchdog.js';
import { ProbeRuntime } from '../../guest-agent/modules/runtime.js';
import { TrustedKeys } from '../../guest-agent/modules/verify.js';
import { loadOrCreateHostKey, type HostKey } from '../../host/keys.js';
import { signModule } from '../../host/probes/package.js';
import type { pb } from '../../proto/codec.js';
import { ErrorCode } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { sleep, waitFor } from '../helpers/wait.js';

const psi = psiAvailable();
const STALL_MS = 600;

let tmp: string;
let key: HostKey;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vesper-runtime-'));
  key = loadOrCreateHostKey(join(tmp, 'host'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const manifest = (name: string, maxInstances = 1) =>
  Buffer.from(
    JSON.stringify({
      name,
      version: '1.0.0',
      agent: `>=0.0.0`,
      description: 'test probe',
      maxInstances,
      events: [
        { id: 1, name: 'beat', payload: 'heartbeat', description: '' },
        { id: 2, name: 'note', payload: 'generic', description: '' },
      ],
      params: [{ name: 'n', type: 'int', default: '1', description: '' }],
    }),
  );
const mod = (name: string, code: string, maxInstances = 1): pb.ILoadProbe => ({
  module: signModule({ manifestBytes: manifest(name, maxInstances), code: Buffer.from(code) }, key),
});
const note = (text: string) => `ctx.emit('note', { generic: { fields: [{ name: 'text', str: ${text} }] } })`;

interface Rig {
  rt: ProbeRuntime;
  recs: pb.IRecord[];
  quarantined: Map<string, QuarantineEntry>;
  qFile: string;
}
const rigs: Rig[] = [];
let n = 0;

function rig(): Rig {
  const keys = new TrustedKeys();
  keys.add(key.publicPem, 'host.pub');
  const recs: pb.IRecord[] = [];
  const quarantined = new Map<string, QuarantineEntry>();
  const qFile = join(tmp, `q${++n}`);
  const rt = new ProbeRuntime({
    agentVersion: VESPER_VERSION,
    tracefs: null,
    tracefsWhy: 'no tracefs in this test',
    kmsg: new KmsgSource(),
    clock: new WallClock(),
    caps: { tracefs: false, kprobeEvents: false, psi, cgroupV2: false, kmsg: false },
    keys,
    log: pino({ level: 'silent' }),
    append: (rec) => {
      recs.push(rec);
      return true;
    },
    instancePrefix: `vesper.test.`,
    traceBufferKb: 64,
    loopStallMs: STALL_MS,
    quarantineFile: qFile,
    quarantined,
  });
  const r = { rt, recs, quarantined, qFile };
  rigs.push(r);
  return r;
}

afterEach(async () => {
  for (const r of rigs.splice(0)) await r.rt.stopAll();
});

const notes = (recs: pb.IRecord[], handle?: number) =>
  recs.filter((r) => r.generic && (handle === undefined || r.handle === handle)).map((r) => r.generic!.fields![0]!.str);
const faults = (recs: pb.IRecord[]) => recs.filter((r) => r.probeFault).map((r) => r.probeFault!);

describe('probe runtime: a worker per load', () => {
  it('runs the probe off the main thread; its instances share one worker; records come back in order', async () => {
    const { rt, recs } = rig();
    const code = `import { isMainThread, threadId } from 'node:worker_threads';
      export default { setup(ctx) {
        for (let i = 0; i < 3; i++) ${note("String(isMainThread) + ':' + threadId + ':' + ctx.instance + ':' + i")};
      } };`;
    const loaded = await rt.load({ ...mod('where', code, 2), instances: 2 });
    expect(loaded.map((l) => l.instance)).toEqual([0, 1]);
    const w = rt.workers();
    expect(w).toHaveLength(1);
    expect(w[0]!.handles.sort()).toEqual(loaded.map((l) => l.handle).sort());
    await waitFor('six notes', () => notes(recs).length === 6, 5000);
    expect(notes(recs)).toEqual([0, 1].flatMap((inst) => [0, 1, 2].map((i) => `false:${w[0]!.threadId}:${inst}:${i}`)));
  });

  it('keeps the synchronous context calls synchronous, errors included', async () => {
    const { rt, recs } = rig();
    const code = `export default { setup(ctx) {
      const seen = [];
      seen.push('has=' + ctx.hasTraceEvent('signal', 'signal_generate'));
      try { ctx.kprobe('do_exit', '', () => {}); seen.push('kprobe ok'); } catch (e) { seen.push('kprobe ' + e.code); }
      try { ctx.emit('undeclared', {}); } catch (e) { seen.push('emit ' + e.code); }
      seen.push('emit=' + ctx.emit('beat', { heartbeat: { count: 1 } }));
      seen.push('comm1=' + ctx.comm(1));
      seen.push('status=' + typeof ctx.procStatus(process.pid));
      seen.push('now=' + (Math.abs(ctx.now() - Number(process.hrtime.bigint())) < 1e9));
      ${note("seen.join(' ')")};
    } };`;
    await rt.load(mod('sync', code));
    await waitFor('the note', () => notes(recs).length === 1, 5000);
    expect(notes(recs)[0]).toBe(
      `has=false kprobe ${ErrorCode.TRACEFS_UNAVAILABLE} emit ${ErrorCode.PROBE_BAD_MANIFEST} emit=true comm1=${readFileSync('/proc/1/comm', 'utf8').trim()} status=object now=true`,
    );
  });

  it.skipIf(!psi)('rolls back what a failed setup attached, and ends its worker', async () => {
    const { rt } = rig();
    const code = `export default { setup(ctx) {
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      ctx.pressure({ resource: 'io', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      throw new Error('setup gives up');
    } };`;
    await expect(rt.load(mod('rollback', code))).rejects.toMatchObject({
      code: ErrorCode.PROBE_LOAD_FAILED,
      message: expect.stringContaining('setup gives up'),
    });
    expect(rt.attached()).toEqual([]);
    expect(rt.workers()).toEqual([]);
    expect(rt.list()).toEqual([]);
    // The agent's own error keeps its code through the worker: no such cgroup.
    const bad = `export default { setup(ctx) {
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 1, windowUs: 1000000, cgroup: '/nonexistent/cg' }, () => {});
    } };`;
    await expect(rt.load(mod('rollback2', bad))).rejects.toMatchObject({ code: ErrorCode.PSI_UNAVAILABLE });
    expect(rt.attached()).toEqual([]);
    expect(rt.workers()).toEqual([]);
  });

  it.skipIf(!psi)('terminates a looping worker, releases what it attached, quarantines it; the others run on', async () => {
    const { rt, recs, quarantined, qFile } = rig();
    const ticker = `export default { setup(ctx) { let i = 0; ctx.every(20, () => ${note('String(i++)')}); } };`;
    const [t] = await rt.load(mod('ticker', ticker));
    const looperCode = `export default { setup(ctx) {
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      ctx.after(100, () => { for (;;) {} });
    } };`;
    const looper = mod('looper', looperCode);
    const [l] = await rt.load(looper);
    expect(rt.attached().find((a) => a.handle === l!.handle)?.what).toEqual(['pressure watcher /proc/pressure/cpu']);
    const mainTicks: number[] = [];
    const mt = setInterval(() => mainTicks.push(performance.now()), 10);
    const t0 = performance.now();
    const f = await waitFor('the fault', () => faults(recs)[0], 10_000);
    clearInterval(mt);
    const took = performance.now() - t0;
    expect(f).toMatchObject({ handle: l!.handle, probe: 'looper', code: ErrorCode.PROBE_LOOPED, unloaded: true });
    expect(took).toBeGreaterThanOrEqual(STALL_MS);
    expect(took).toBeLessThan(STALL_MS + 3000);
    // The main thread never stalled meanwhile, and the ticker kept ticking.
    let gap = 0;
    for (let i = 1; i < mainTicks.length; i++) gap = Math.max(gap, mainTicks[i]! - mainTicks[i - 1]!);
    expect(gap).toBeLessThan(200);
    const ticks = notes(recs, t!.handle!).length;
    expect(ticks).toBeGreaterThan((took / 20) * 0.5);
    await waitFor('released', () => rt.attached().every((a) => a.handle !== l!.handle), 5000);
    expect(rt.workers().map((w) => w.name)).toEqual(['ticker']);
    expect(rt.list().map((p) => p.name)).toEqual(['ticker']);
    await sleep(300);
    expect(faults(recs)).toHaveLength(1);
    expect(notes(recs, t!.handle!).length).toBeGreaterThan(ticks);
    // Quarantined here and in the file.
    expect(readQuarantine(qFile)).toEqual([expect.objectContaining({ probe: 'looper', told: true })]);
    expect(quarantined.size).toBe(1);
    await expect(rt.load(looper)).rejects.toMatchObject({ code: ErrorCode.PROBE_QUARANTINED });
  });

  it('a loop in setup fails the load as looped and quarantines the module', async () => {
    const { rt, recs, quarantined } = rig();
    const m = mod('setup-looper', `export default { setup(ctx) { for (;;) {} } };`);
    await expect(rt.load(m)).rejects.toMatchObject({ code: ErrorCode.PROBE_LOOPED });
    expect(quarantined.size).toBe(1);
    expect(rt.workers()).toEqual([]);
    expect(faults(recs)).toEqual([]); // the load failed: that is the report
    await expect(rt.load(m)).rejects.toMatchObject({ code: ErrorCode.PROBE_QUARANTINED });
  });

  it.skipIf(!psi)('a throw in a handler unloads that probe as crashed, its resources released', async () => {
    const { rt, recs } = rig();
    const code = `export default { setup(ctx) {
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      let i = 0;
      ctx.every(10, () => { if (++i === 3) throw new Error('third tick'); ${note('String(i)')}; });
    } };`;
    const [p] = await rt.load(mod('thrower', code));
    const f = await waitFor('the fault', () => faults(recs)[0], 5000);
    expect(f).toMatchObject({ handle: p!.handle, code: ErrorCode.PROBE_CRASHED, message: 'third tick', unloaded: true });
    await waitFor('unloaded and released', () => !rt.list().length && !rt.attached().length && !rt.workers().length, 5000);
    expect(notes(recs)).toEqual(['1', '2']);
  });

  it.skipIf(!psi)("a throw outside the context (the probe's own timer) kills only its worker; reported and released", async () => {
    const { rt, recs } = rig();
    const code = `export default { setup(ctx) {
      ctx.pressure({ resource: 'cpu', kind: 'some', thresholdUs: 100000, windowUs: 1000000 }, () => {});
      setTimeout(() => { throw new Error('own timer'); }, 50);
    } };`;
    const other = `export default { setup(ctx) { ctx.every(20, () => ${note("'alive'")}); } };`;
    const [o] = await rt.load(mod('other', other));
    const [p] = await rt.load(mod('wild', code));
    const f = await waitFor('the fault', () => faults(recs)[0], 5000);
    expect(f).toMatchObject({ handle: p!.handle, code: ErrorCode.PROBE_CRASHED, unloaded: true });
    expect(f.message).toContain('own timer');
    await waitFor('released', () => rt.attached().every((a) => a.handle !== p!.handle), 5000);
    expect(rt.list().map((x) => x.handle)).toEqual([o!.handle]);
    const before = notes(recs, o!.handle!).length;
    await sleep(200);
    expect(notes(recs, o!.handle!).length).toBeGreaterThan(before);
  });

  it('unload runs teardown in the worker first, then ends the worker; setParams keeps the worker', async () => {
    const { rt, recs } = rig();
    const code = `export default {
      setup(ctx) { ${note("'setup n=' + ctx.params.n")}; },
      teardown(ctx) { ${note("'teardown n=' + ctx.params.n")}; },
    };`;
    const [p] = await rt.load(mod('tidy', code));
    const tid = rt.workers()[0]!.threadId;
    await rt.setParams(p!.handle!, [{ name: 'n', value: '2' }]);
    expect(rt.workers()[0]!.threadId).toBe(tid);
    await rt.unload([p!.handle!]);
    expect(rt.workers()).toEqual([]);
    await waitFor('notes', () => notes(recs).length === 4, 5000);
    expect(notes(recs)).toEqual(['setup n=1', 'teardown n=1', 'setup n=2', 'teardown n=2']);
  });

  it('a module that does not evaluate fails the load', async () => {
    const { rt } = rig();
    await expect(rt.load(mod('broken', 'export default {'))).rejects.toMatchObject({ code: ErrorCode.PROBE_LOAD_FAILED });
    await expect(rt.load(mod('nosetup', 'export default {};'))).rejects.toMatchObject({ code: ErrorCode.PROBE_LOAD_FAILED });
    expect(rt.workers()).toEqual([]);
  });
});
