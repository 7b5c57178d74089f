// What a kernel lacks is said at attach, never silently ignored: each shipped probe names the
// trace event fields it reads, and they are checked against the running kernel's formats; what a
// probe runs without it says with ctx.lacks. The formats are those of the Debian guests' kernels
// (6.1 and 6.12), read from their tracefs (tracefs-formats.ts), and mainline 6.1's mark_victim.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseManifest } from '../../contract/manifest.js';
import { resolveParams } from '../../contract/params.js';
import type { Capabilities, ProbeModule } from '../../contract/probe-api.js';
import { EventFormat } from '../../guest-agent/kernel/event-format.js';
import { ReaderBudget, TraceFs, kallsyms, type TraceInstance } from '../../guest-agent/kernel/tracefs.js';
import { probeOfAgent } from '../../host/channel/agent-probes.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import oomProbe from '../../probes/oom/index.js';
import processProbe from '../../probes/process/index.js';
import signalProbe from '../../probes/signal/index.js';
import { caught } from '../helpers/caught.js';
import { fakeProbeContext } from '../helpers/probe-context.js';
import { MAINLINE_6_1_MARK_VICTIM, TRACEFS_FORMATS } from './tracefs-formats.js';

const PROBES: Record<string, ProbeModule> = { signal: signalProbe, process: processProbe, oom: oomProbe };
const ALL_CAPS: Capabilities = { tracefs: true, kprobeEvents: true, psi: true, cgroupV2: true, kmsg: true };

interface Seen {
  traced: Array<{ event: string; fields: readonly string[] }>;
  lacks: string[];
}

/** Mainline 6.1 as far as the probes see it: Debian's 6.1 without the backported mark_victim figures. */
const MAINLINE_6_1: Record<string, string> = { ...TRACEFS_FORMATS['6.1'], 'oom/mark_victim': MAINLINE_6_1_MARK_VICTIM };

/** Runs a shipped probe's setup against a kernel's formats, writing down what it asks for. */
async function setupOn(probe: string, formats: Record<string, string>, caps: Capabilities = ALL_CAPS): Promise<Seen> {
  const fmt = (key: string): EventFormat => {
    const text = formats[key];
    if (!text) throw new VesperError(ErrorCode.TRACEFS_EVENT_MISSING, `no ${key} in the fixtures`);
    return EventFormat.parse(text);
  };
  const manifest = parseManifest(readFileSync(join(import.meta.dirname, `../../probes/${probe}/manifest.json`)), VESPER_VERSION);
  const { typed } = resolveParams(manifest);
  const seen: Seen = { traced: [], lacks: [] };
  const ctx = fakeProbeContext({
    name: probe,
    params: typed,
    capabilities: caps,
    trace: (system, event, _filter, _fn, fields = []) => {
      fmt(`${system}/${event}`);
      seen.traced.push({ event: `${system}/${event}`, fields });
    },
    hasTraceEvent: (system, event, field) => {
      const text = formats[`${system}/${event}`];
      return text !== undefined && (field === undefined || EventFormat.parse(text).has(field));
    },
    lacks: (m) => seen.lacks.push(m),
  });
  await (PROBES[probe] as ProbeModule).setup(ctx);
  return seen;
}

describe("the shipped probes on the Debian guests' kernels (6.1, 6.12)", () => {
  for (const kernel of ['6.1', '6.12'] as const)
    for (const probe of ['signal', 'process', 'oom'])
      it(`${probe} on ${kernel}: every field it reads is in the kernel's format of its event`, async () => {
        const formats = TRACEFS_FORMATS[kernel];
        const seen = await setupOn(probe, formats);
        expect(seen.traced.length).toBeGreaterThan(0);
        for (const t of seen.traced) {
          expect(t.fields.length, `${t.event} names the fields it reads`).toBeGreaterThan(0);
          expect(EventFormat.parse(formats[t.event] ?? '').missing(t.fields), t.event).toEqual([]);
        }
        expect(seen.lacks).toEqual([]);
      });

  it("mark_victim's memory figures: in Debian's 6.1 (backported) and 6.12, not in mainline 6.1", () => {
    const figures = ['comm', 'total_vm', 'anon_rss', 'file_rss', 'shmem_rss', 'uid', 'pgtables', 'oom_score_adj'];
    expect(EventFormat.parse(TRACEFS_FORMATS['6.1']['oom/mark_victim'] ?? '').missing(figures)).toEqual([]);
    expect(EventFormat.parse(TRACEFS_FORMATS['6.12']['oom/mark_victim'] ?? '').missing(figures)).toEqual([]);
    expect(EventFormat.parse(MAINLINE_6_1_MARK_VICTIM).missing(figures)).toEqual(figures);
  });

  it('oom on mainline 6.1 says mark_victim has no memory figures, and where they come from instead', async () => {
    expect((await setupOn('oom', MAINLINE_6_1)).lacks).toEqual([
      "no memory figures in oom/mark_victim (they came in Linux 6.8): they are read from the kernel log's OOM report",
    ]);
  });

  it('oom without a readable /dev/kmsg says what its records lose', async () => {
    const noKmsg = { ...ALL_CAPS, kmsg: false };
    expect((await setupOn('oom', MAINLINE_6_1, noKmsg)).lacks).toEqual([
      expect.stringMatching(/^no readable \/dev\/kmsg, and no memory figures/),
    ]);
    expect((await setupOn('oom', TRACEFS_FORMATS['6.12'], noKmsg)).lacks).toEqual([
      expect.stringMatching(/^no readable \/dev\/kmsg: .*no constraint/),
    ]);
  });

  it('process without syscall events (CONFIG_FTRACE_SYSCALLS off) loads, saying exit codes are not known', async () => {
    const formats = { ...TRACEFS_FORMATS['6.12'] };
    delete formats['syscalls/sys_enter_exit_group'];
    const seen = await setupOn('process', formats);
    expect(seen.lacks).toEqual([expect.stringContaining('no syscalls/sys_enter_exit_group')]);
    expect(seen.traced.map((t) => t.event)).not.toContain('syscalls/sys_enter_exit_group');
  });
});

describe('a tracing instance refuses an event whose format lacks a field the probe reads', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  /** A tracefs-shaped directory holding one mark_victim format, and an instance in it. */
  const instanceWith = (format: string): TraceInstance => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-tracefs-'));
    dirs.push(dir);
    mkdirSync(join(dir, 'events/oom/mark_victim'), { recursive: true });
    writeFileSync(join(dir, 'events/oom/mark_victim/format'), format);
    mkdirSync(join(dir, 'instances'));
    const t = new TraceFs(dir, new ReaderBudget(64)).createInstance('x', handler, 64);
    mkdirSync(join(t.dir, 'events/oom/mark_victim'), { recursive: true });
    return t;
  };
  const handler = { event: () => undefined, missed: () => undefined, readError: () => undefined };

  it('mainline 6.1: VSP_TRACEFS_FIELD_MISSING names the kernel, the fields and what the event has; nothing is enabled', () => {
    const t = instanceWith(MAINLINE_6_1_MARK_VICTIM);
    const err = caught(() => t.enable('oom', 'mark_victim', '', ['pid', 'total_vm', 'anon_rss']));
    expect(err).toMatchObject({ code: ErrorCode.TRACEFS_FIELD_MISSING, detail: 'its fields: pid' });
    expect(err.message).toMatch(/^this kernel \(.+\) has no field total_vm, anon_rss in trace event oom\/mark_victim$/);
    expect(existsSync(join(t.dir, 'events/oom/mark_victim/enable'))).toBe(false);
  });

  it("Debian's 6.1 and 6.12: the fields are there, and the event is enabled", () => {
    for (const kernel of ['6.1', '6.12'] as const) {
      const t = instanceWith(TRACEFS_FORMATS[kernel]['oom/mark_victim'] ?? '');
      t.enable('oom', 'mark_victim', '', ['pid', 'total_vm', 'anon_rss']);
      expect(readFileSync(join(t.dir, 'events/oom/mark_victim/enable'), 'utf8'), kernel).toBe('1');
    }
  });
});

describe('a kprobe on a function the kernel has not', () => {
  const KALLSYMS = [
    'ffffffff81000000 T _stext',
    'ffffffff810a1230 T do_exit',
    'ffffffff810b2000 t send_signal_locked.isra.0',
    'ffffffff810b2100 t send_signal_locked.cold',
    'ffffffffc0001000 t nf_hook_x\t[nf_tables]',
    '',
  ].join('\n');

  it('kallsyms: found, or not with the compiler clones of the name', () => {
    expect(kallsyms('do_exit', KALLSYMS)).toEqual({ found: true, near: [] });
    expect(kallsyms('send_signal_locked', KALLSYMS)).toEqual({
      found: false,
      near: ['send_signal_locked.isra.0', 'send_signal_locked.cold'],
    });
    expect(kallsyms('nf_hook_x', KALLSYMS)).toEqual({ found: true, near: [] });
    expect(kallsyms('vesper_no_such_function', KALLSYMS)).toEqual({ found: false, near: [] });
  });

  it('a refused definition is VSP_KPROBE_NO_SYMBOL when /proc/kallsyms does not name the function', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-tracefs-'));
    try {
      mkdirSync(join(dir, 'events'));
      // a directory where the file should be: every write is refused, as the kernel refuses a missing symbol
      mkdirSync(join(dir, 'kprobe_events'));
      const tfs = new TraceFs(dir, new ReaderBudget(64));
      const err = caught(() => tfs.addKprobe('k1', 'vesper_no_such_function sig=%si:s32'));
      if (kallsyms('do_exit') === null) {
        // no readable /proc/kallsyms here: the kernel's refusal is all there is to say
        expect(err).toMatchObject({ code: ErrorCode.KPROBE_BAD_DEFINITION });
        return;
      }
      expect(err).toMatchObject({ code: ErrorCode.KPROBE_NO_SYMBOL });
      expect(err.message).toMatch(/^this kernel \(.+\) has no function vesper_no_such_function to probe/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the host keeps an agent's warnings bounded", () => {
  it('codes that are no VSP_ code become VSP_KERNEL_LACKS; at most 16, each cut to 512 characters', () => {
    const { info } = probeOfAgent({
      handle: 3,
      name: 'oom',
      version: '1.0.0',
      warnings: [
        { code: ErrorCode.KERNEL_LACKS, message: 'no memory figures' },
        { code: '<script>', message: 'x'.repeat(2000) },
        ...Array.from({ length: 30 }, (_, i) => ({ code: ErrorCode.KERNEL_LACKS, message: `w${i}` })),
      ],
    });
    expect(info.warnings).toHaveLength(16);
    expect(info.warnings[0]).toEqual({ code: 'VSP_KERNEL_LACKS', message: 'no memory figures' });
    expect(info.warnings[1]).toEqual({ code: 'VSP_KERNEL_LACKS', message: 'x'.repeat(512) });
  });
});
