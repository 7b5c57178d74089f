// Loads, runs and unloads probe modules.
//
// Everything a probe attaches goes through its context and is written down as it happens
// (a tracing instance, a kprobe, a kernel-log subscription, a timer), so that a failed
// load releases exactly what that load attached and an unload releases all of it. Loads,
// unloads and parameter changes run one at a time through one queue. A probe that throws
// — in setup, in an event handler or in a timer — is unloaded and reported as a
// ProbeFault record; the agent and the other probes carry on.
import type { pb } from '../../proto/codec.js';
import { v1 } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { MemoryEventsWatcher } from '../kernel/cgroup.js';
import type { EventFormat, FieldValue } from '../kernel/event-format.js';
import type { KmsgSource } from '../kernel/kmsg.js';
import { PressureWatcher, pressureFile, readPressure } from '../kernel/pressure.js';
import type { ProcCache, WallClock } from '../kernel/proc.js';
import { monoNow } from '../kernel/proc.js';
import type { TraceFs, TraceInstance } from '../kernel/tracefs.js';
import type { Logger } from '../log.js';
import type { Capabilities, EventPayload, ProbeContext, ProbeManifest, ProbeModule, TraceEvent } from './api.js';
import type { LoopWatchdog, QuarantineEntry } from './loop-watchdog.js';
import { parseManifest } from './manifest.js';
import { resolveParams } from './params.js';
import type { TrustedKeys } from './verify.js';

export interface RuntimeServices {
  agentVersion: string;
  tracefs: TraceFs | null;
  tracefsWhy: string;
  kmsg: KmsgSource;
  proc: ProcCache;
  clock: WallClock;
  caps: Capabilities;
  keys: TrustedKeys;
  log: Logger;
  /** Appends a record to the ring; false when it had to be dropped. */
  append(rec: pb.IRecord): boolean;
  instancePrefix: string;
  traceBufferKb: number;
  /** marks which probe's code runs, for the loop watchdog (loop-watchdog.ts) */
  watch?: LoopWatchdog | null;
  /** modules (digest, hex) an earlier agent quarantined for looping: refused */
  quarantined?: Map<string, QuarantineEntry>;
}

type Release = () => void | Promise<void>;

class ProbeInstance {
  readonly resources: { what: string; release: Release }[] = [];
  trace: TraceInstance | null = null;
  readonly traceHandlers = new Map<number, (ev: TraceEvent) => void>();
  readonly eventIds: Map<string, { id: number; payload: string }>;
  faulted = false;
  stopped = false;
  kprobes = 0;
  ctx!: ProbeContext;

  constructor(
    readonly handle: number,
    readonly manifest: ProbeManifest,
    readonly instance: number,
    readonly paramsText: Record<string, string>,
    readonly module: ProbeModule,
    readonly digest: Buffer,
    readonly code: Uint8Array,
    readonly manifestBytes: Uint8Array,
  ) {
    this.eventIds = new Map(manifest.events.map((e) => [e.name, { id: e.id, payload: e.payload }]));
  }

  describe(): pb.ILoadedProbe {
    return {
      handle: this.handle,
      name: this.manifest.name,
      version: this.manifest.version,
      instance: this.instance,
      params: Object.entries(this.paramsText).map(([name, value]) => ({ name, value })),
      digest: this.digest,
      events: this.manifest.events.map((e) => ({ id: e.id, name: e.name })),
    };
  }
}

export class ProbeRuntime {
  private readonly instances = new Map<number, ProbeInstance>();
  private nextHandle = 1;
  private queue: Promise<unknown> = Promise.resolve();
  faults = 0;

  constructor(private readonly s: RuntimeServices) {}

  list(): pb.ILoadedProbe[] {
    return [...this.instances.values()].map((i) => i.describe());
  }

  /** Runs fn after every earlier load/unload/set has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  load(req: pb.ILoadProbe): Promise<pb.ILoadedProbe[]> {
    return this.serial(() => this.loadNow(req));
  }

  unload(handles: number[], name = ''): Promise<number[]> {
    return this.serial(async () => {
      const targets = handles.length
        ? handles.map((h) => {
            const i = this.instances.get(h);
            if (!i) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `no probe with handle ${h}`);
            return i;
          })
        : [...this.instances.values()].filter((i) => i.manifest.name === name);
      if (!targets.length) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `no probe named ${JSON.stringify(name)} is loaded`);
      for (const t of targets) await this.stop(t);
      return targets.map((t) => t.handle);
    });
  }

  setParams(handle: number, params: pb.IParamValue[]): Promise<pb.ILoadedProbe> {
    return this.serial(async () => {
      const old = this.instances.get(handle);
      if (!old) throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `no probe with handle ${handle}`);
      const next = resolveParams(
        old.manifest,
        Object.entries(old.paramsText).map(([name, value]) => ({ name, value })),
        params,
      );
      // Tear down, then set up with the new values; if that fails, the old ones come back.
      await this.stop(old);
      try {
        const inst = await this.start(old.handle, old.manifest, old.instance, next.text, next.typed, old.module, old);
        return inst.describe();
      } catch (err) {
        const prev = resolveParams(
          old.manifest,
          Object.entries(old.paramsText).map(([name, value]) => ({ name, value })),
        );
        await this.start(old.handle, old.manifest, old.instance, prev.text, prev.typed, old.module, old);
        throw err;
      }
    });
  }

  /** Unloads everything (agent shutdown). */
  stopAll(): Promise<void> {
    return this.serial(async () => {
      for (const i of [...this.instances.values()].reverse()) await this.stop(i);
    });
  }

  private async loadNow(req: pb.ILoadProbe): Promise<pb.ILoadedProbe[]> {
    const mod = req.module;
    if (!mod) throw new VesperError(ErrorCode.PROBE_BAD_MANIFEST, 'load request without a module');
    const digest = this.s.keys.verifyModule(mod);
    const q = this.s.quarantined?.get(digest.toString('hex'));
    if (q)
      throw new VesperError(
        ErrorCode.PROBE_QUARANTINED,
        `probe ${q.probe} (this module) was stuck in its code for ${q.stalledMs} ms at ${new Date(q.at).toISOString()}; the agent restarted and refuses it until a different module is pushed`,
      );
    const manifestBytes = mod.manifest ?? new Uint8Array();
    const manifest = parseManifest(manifestBytes, this.s.agentVersion);
    const count = Math.max(1, req.instances ?? 1);
    if (count > manifest.maxInstances)
      throw new VesperError(
        ErrorCode.PROBE_BAD_PARAM,
        `probe ${manifest.name} allows at most ${manifest.maxInstances} instances; ${count} asked`,
      );
    for (const i of this.instances.values())
      if (i.manifest.name === manifest.name)
        throw new VesperError(
          ErrorCode.PROBE_ALREADY_LOADED,
          `probe ${manifest.name} is already loaded (handle ${i.handle}); unload it first or set its parameters`,
        );
    const perInstance = Array.from({ length: count }, (_, n) => {
      const over = (req.instanceParams ?? []).find((p) => (p.instance ?? 0) === n)?.params;
      return resolveParams(manifest, req.params, over);
    });
    const module = await importModule(mod.code ?? new Uint8Array(), manifest.name);
    const started: ProbeInstance[] = [];
    try {
      for (let n = 0; n < count; n++) {
        const p = perInstance[n]!;
        started.push(await this.start(this.nextHandle++, manifest, n, p.text, p.typed, module, { digest, code: mod.code!, manifestBytes }));
      }
    } catch (err) {
      for (const s of started.reverse()) await this.stop(s);
      throw err;
    }
    return started.map((s) => s.describe());
  }

  private async start(
    handle: number,
    manifest: ProbeManifest,
    instance: number,
    text: Record<string, string>,
    typed: Record<string, ReturnType<typeof resolveParams>['typed'][string]>,
    module: ProbeModule,
    from: { digest: Buffer; code: Uint8Array; manifestBytes: Uint8Array },
  ): Promise<ProbeInstance> {
    const inst = new ProbeInstance(handle, manifest, instance, text, module, from.digest, from.code, from.manifestBytes);
    inst.ctx = this.context(inst, typed);
    const w = this.s.watch;
    w?.known(handle, manifest.name, from.digest);
    try {
      let ready: Promise<void> | void;
      w?.enter(handle); // setup's synchronous part is the probe's code too
      try {
        ready = module.setup(inst.ctx);
      } finally {
        w?.leave();
      }
      await ready;
      inst.trace?.start();
    } catch (err) {
      await this.release(inst);
      throw err instanceof VesperError
        ? err
        : new VesperError(
            ErrorCode.PROBE_LOAD_FAILED,
            `probe ${manifest.name}#${instance} failed to start: ${(err as Error)?.message ?? err}`,
          );
    }
    this.instances.set(handle, inst);
    this.s.log.info({ probe: manifest.name, instance, handle, params: text }, 'probe loaded');
    return inst;
  }

  private async stop(inst: ProbeInstance): Promise<void> {
    if (inst.stopped) return;
    inst.stopped = true;
    this.instances.delete(inst.handle);
    try {
      await inst.module.teardown?.(inst.ctx);
    } catch (err) {
      this.s.log.warn({ probe: inst.manifest.name, err: (err as Error).message }, 'probe teardown threw');
    }
    await this.release(inst);
    this.s.log.info({ probe: inst.manifest.name, instance: inst.instance, handle: inst.handle }, 'probe unloaded');
  }

  private async release(inst: ProbeInstance): Promise<void> {
    inst.stopped = true;
    while (inst.resources.length) {
      const r = inst.resources.pop()!;
      try {
        await r.release();
      } catch (err) {
        this.s.log.warn({ probe: inst.manifest.name, what: r.what, err: (err as Error).message }, 'release failed');
      }
    }
  }

  /** A probe threw: report it once, unload it, keep going. */
  private fault(inst: ProbeInstance, err: unknown): void {
    if (inst.faulted) return;
    inst.faulted = true;
    this.faults++;
    const message = (err as Error)?.stack ?? String(err);
    this.s.log.error(
      { probe: inst.manifest.name, instance: inst.instance, handle: inst.handle, err: message },
      'probe crashed; unloading it',
    );
    const c = this.s.clock.now();
    this.s.append({
      monoNs: c.mono,
      wallNs: c.wall,
      handle: 0,
      eventId: 0,
      probeFault: {
        handle: inst.handle,
        probe: inst.manifest.name,
        instance: inst.instance,
        code: ErrorCode.PROBE_CRASHED,
        message: (err as Error)?.message ?? String(err),
        unloaded: true,
      },
    });
    void this.serial(() => this.stop(inst));
  }

  private guard<A extends unknown[]>(inst: ProbeInstance, fn: (...a: A) => void): (...a: A) => void {
    const w = this.s.watch;
    return (...a: A) => {
      if (inst.stopped) return;
      w?.enter(inst.handle);
      try {
        fn(...a);
      } catch (err) {
        this.fault(inst, err);
      } finally {
        w?.leave();
      }
    };
  }

  private traceInstance(inst: ProbeInstance): TraceInstance {
    const tfs = this.s.tracefs;
    if (!tfs) throw new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, `probe ${inst.manifest.name} needs tracefs: ${this.s.tracefsWhy}`);
    if (!inst.trace) {
      const handlers = inst.traceHandlers;
      const t = tfs.createInstance(
        `${this.s.instancePrefix}${inst.handle}.${inst.manifest.name}`,
        {
          event: (fmt: EventFormat, fields: Record<string, FieldValue>, ts: number, cpu: number) => {
            const h = handlers.get(fmt.id);
            if (h) h({ ts, cpu, pid: fields['common_pid'] as number, fields });
          },
          missed: (count: number, ts: number, cpu: number) => {
            const rec: pb.IRecord = {
              monoNs: ts,
              wallNs: this.s.clock.wallFromMono(ts),
              handle: 0,
              eventId: 0,
              loss: { source: v1.LossEvent.Source.KERNEL_RING, count, firstMonoNs: ts, lastMonoNs: ts, handle: inst.handle, cpu },
            };
            this.s.append(rec);
          },
          readError: (err) => this.s.log.warn({ probe: inst.manifest.name, err: err.message }, 'trace read error'),
        },
        this.s.traceBufferKb,
      );
      inst.trace = t;
      inst.resources.push({
        what: 'tracing instance',
        release: async () => {
          await t.remove();
          // Events per page read tells how well reads batch under load.
          this.s.log.info({ probe: inst.manifest.name, events: t.eventsRead, pages: t.pagesRead }, 'tracing instance removed');
        },
      });
    }
    return inst.trace;
  }

  private context(inst: ProbeInstance, params: ProbeContext['params']): ProbeContext {
    const s = this.s;
    const own = (what: string, release: Release): void => {
      inst.resources.push({ what, release });
    };
    return {
      name: inst.manifest.name,
      instance: inst.instance,
      handle: inst.handle,
      params,
      capabilities: s.caps,
      log: (msg) => s.log.info({ probe: inst.manifest.name, instance: inst.instance }, msg),
      hasTraceEvent: (system, event, field) => {
        if (!s.tracefs?.hasEvent(system, event)) return false;
        return field ? s.tracefs.format(system, event).has(field) : true;
      },
      trace: (system, event, filter, handler) => {
        const t = this.traceInstance(inst);
        const fmt = t.enable(system, event, filter);
        inst.traceHandlers.set(fmt.id, this.guard(inst, handler));
      },
      kprobe: (spec, filter, handler) => {
        const tfs = s.tracefs;
        if (!tfs) throw new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, `kprobes need tracefs: ${s.tracefsWhy}`);
        const t = this.traceInstance(inst);
        const name = `vesper_${process.pid}_${inst.handle}_${inst.kprobes++}`;
        tfs.addKprobe(name, spec);
        own(`kprobe ${name}`, () => {
          t.disable('vesper', name);
          tfs.removeKprobe(name);
        });
        const fmt = t.enable('vesper', name, filter);
        inst.traceHandlers.set(fmt.id, this.guard(inst, handler));
        return name;
      },
      kmsg: (handler) => {
        if (!s.caps.kmsg) throw new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, '/dev/kmsg cannot be read here');
        const off = s.kmsg.subscribe(this.guard(inst, handler));
        own('kernel log subscription', off);
      },
      pressure: (o, handler) => {
        const file = pressureFile(o.resource, o.cgroup);
        if (!readPressure(file, o.kind))
          throw new VesperError(
            ErrorCode.PSI_UNAVAILABLE,
            `no ${o.kind} line in ${file} (kernel without CONFIG_PSI, psi=0, or no such cgroup)`,
          );
        const w = new PressureWatcher(file, o.resource, o.kind, o.thresholdUs, o.windowUs, this.guard(inst, handler));
        w.start();
        own(`pressure watcher ${file}`, () => w.stop());
      },
      memoryEvents: (path, handler) => {
        const w = new MemoryEventsWatcher(path, this.guard(inst, handler));
        try {
          w.start();
        } catch (err) {
          throw new VesperError(ErrorCode.CGROUP_UNAVAILABLE, `cannot watch ${w.file}: ${(err as Error).message}`);
        }
        own(`memory.events watcher ${w.file}`, () => w.stop());
      },
      every: (ms, fn) => {
        const t = setInterval(this.guard(inst, fn), ms);
        own('interval timer', () => clearInterval(t));
      },
      after: (ms, fn) => {
        const t = setTimeout(this.guard(inst, fn), ms);
        own('timer', () => clearTimeout(t));
      },
      emit: (event, payload: EventPayload, tsNs) => {
        const spec = inst.eventIds.get(event);
        if (!spec)
          throw new VesperError(
            ErrorCode.PROBE_BAD_MANIFEST,
            `probe ${inst.manifest.name} emitted ${event}, which its manifest does not declare`,
          );
        const mono = tsNs ?? monoNow();
        const rec: pb.IRecord = { monoNs: mono, wallNs: s.clock.wallFromMono(mono), handle: inst.handle, eventId: spec.id };
        (rec as Record<string, unknown>)[spec.payload] = (payload as Record<string, unknown>)[spec.payload] ?? {};
        return s.append(rec);
      },
      lost: (count) => {
        const c = s.clock.now();
        s.append({
          monoNs: c.mono,
          wallNs: c.wall,
          handle: 0,
          eventId: 0,
          loss: { source: v1.LossEvent.Source.PROBE, count, firstMonoNs: c.mono, lastMonoNs: c.mono, handle: inst.handle },
        });
      },
      comm: (pid) => s.proc.comm(pid),
      procStatus: (pid) => s.proc.status(pid),
      now: monoNow,
    };
  }
}

async function importModule(code: Uint8Array, name: string): Promise<ProbeModule> {
  let ns: { default?: ProbeModule };
  try {
    ns = (await import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`)) as { default?: ProbeModule };
  } catch (err) {
    throw new VesperError(ErrorCode.PROBE_LOAD_FAILED, `probe ${name} does not evaluate: ${(err as Error).message}`);
  }
  const m = ns.default;
  if (!m || typeof m.setup !== 'function')
    throw new VesperError(ErrorCode.PROBE_LOAD_FAILED, `probe ${name} has no default export with a setup(ctx) function`);
  return m;
}
