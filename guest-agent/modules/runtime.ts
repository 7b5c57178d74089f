// Loads, runs and unloads probe modules.
//
// Everything a probe attaches goes through its context and is written down as it happens
// (a tracing instance, a kprobe, a kernel-log subscription, a watcher), so that a failed
// load releases exactly what that load attached and an unload releases all of it. Loads,
// unloads and parameter changes run one at a time through one queue. A probe that throws
// — in setup, in an event handler or in a timer — is unloaded and reported as a
// ProbeFault record; the agent and the other probes carry on.
//
// Each load runs its module's code in a worker thread of its own (probe-worker.ts); every
// instance of the load shares it. What a probe attaches in the kernel is attached, owned and
// released here, on the main thread, so nothing depends on the worker to clean up. A worker
// whose event loop has not turned for loopStallMs (counted in this thread's checks, so a
// paused guest is not a loop) is terminated; its instances are released and reported once
// each as a ProbeFault record (VSP_PROBE_LOOPED), and its module's digest is quarantined:
// refused from then on, by this agent and (through the quarantine file) by later ones.
import type { pb } from '../../proto/codec.js';
import { v1 } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { MemoryEventsWatcher } from '../kernel/cgroup.js';
import type { EventFormat, FieldValue } from '../kernel/event-format.js';
import type { KmsgSource } from '../kernel/kmsg.js';
import { PressureWatcher, pressureFile, readPressure } from '../kernel/pressure.js';
import { onTick, poke } from '../kernel/ticker.js';
import type { WallClock } from '../kernel/proc.js';
import type { TraceFs, TraceInstance } from '../kernel/tracefs.js';
import type { Logger } from '../log.js';
import type { Capabilities, KmsgLine, ParamValue, ProbeManifest, PsiSample, TraceEvent } from '../../contract/probe-api.js';
import { appendQuarantine, type QuarantineEntry } from './loop-watchdog.js';
import { parseManifest } from '../../contract/manifest.js';
import { ProbeWorker, type WorkerOut } from './probe-worker.js';
import { resolveParams } from '../../contract/params.js';
import { ProbeInstance, type Load, type Release } from './probe-instance.js';
import type { TrustedKeys } from './verify.js';

/**
 * How often the main thread looks at the probe workers' liveness: three looks per stall, at
 * most one a second, on the agent's shared tick (ticker.ts), so that an idle agent pays no
 * wake-up of its own for it; a loop is reported at most one look after the stall, 4 s at the
 * default 3 s.
 */
function checkMsFor(stallMs: number): number {
  return Math.max(50, Math.min(1000, Math.floor(stallMs / 3)));
}

export interface RuntimeServices {
  agentVersion: string;
  tracefs: TraceFs | null;
  tracefsWhy: string;
  kmsg: KmsgSource;
  clock: WallClock;
  caps: Capabilities;
  keys: Pick<TrustedKeys, 'verifyModule'>;
  log: Logger;
  /** Appends a record to the ring; false when it had to be dropped. */
  append(rec: pb.IRecord): boolean;
  instancePrefix: string;
  traceBufferKb: number;
  /** how long a probe's worker may be stuck in its code before it is terminated (ms, default 3000) */
  loopStallMs?: number;
  /** where quarantined modules are written down for later agents (loop-watchdog.ts); none: this agent only */
  quarantineFile?: string | null;
  /** modules (digest, hex) quarantined for looping, by an earlier agent or by this one: refused */
  quarantined?: Map<string, QuarantineEntry>;
  /**
   * Events a probe's worker may have waiting (default 16384): beyond this it is not keeping
   * up, and further events are dropped and told as a loss instead of piling up in memory.
   */
  maxBacklog?: number;
  /** a new thread (a probe's worker) runs: give it the agent's priority */
  onThread?: () => void;
}

export class ProbeRuntime {
  private readonly instances = new Map<number, ProbeInstance>();
  private readonly loads = new Set<Load>();
  /** instances not yet released */
  private readonly holding = new Set<ProbeInstance>();
  private nextHandle = 1;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly ringFull = new SharedArrayBuffer(4);
  private readonly ringFullFlag = new Int32Array(this.ringFull);
  private watchdog: (() => void) | null = null;
  faults = 0;

  constructor(private readonly s: RuntimeServices) {}

  list(): pb.ILoadedProbe[] {
    return [...this.instances.values()].map((i) => i.describe());
  }

  /** The probe workers running now (thread ids), for tests and diagnostics. */
  workers(): { name: string; threadId: number; handles: number[] }[] {
    return [...this.loads].map((l) => ({ name: l.manifest.name, threadId: l.worker.threadId, handles: [...l.insts.keys()] }));
  }

  /** What each instance (starting or loaded) has attached now, for tests and diagnostics. */
  attached(): { handle: number; probe: string; what: string[] }[] {
    return [...this.holding].map((i) => ({ handle: i.handle, probe: i.manifest.name, what: i.resources.map((r) => r.what) }));
  }

  /** Runs fn after every earlier load/unload/set has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** One of the agent's own records (handle 0: a probe fault, a loss), stamped now. */
  private agentRecord(body: pb.IRecord | ((monoNs: number) => pb.IRecord)): boolean {
    const c = this.s.clock.now();
    return this.append({ ...(typeof body === 'function' ? body(c.mono) : body), monoNs: c.mono, wallNs: c.wall, handle: 0, eventId: 0 });
  }

  private append(rec: pb.IRecord): boolean {
    const ok = this.s.append(rec);
    // What emit() tells a probe: whether the ring took the last record.
    Atomics.store(this.ringFullFlag, 0, ok ? 0 : 1);
    return ok;
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
      // Tear down, then set up with the new values (in the same worker); if that fails, the
      // old ones come back.
      await this.stop(old, true);
      try {
        const inst = await this.start(old.handle, old.instance, next.text, next.typed, old.load, old);
        return inst.describe();
      } catch (err) {
        const prev = resolveParams(
          old.manifest,
          Object.entries(old.paramsText).map(([name, value]) => ({ name, value })),
        );
        try {
          await this.start(old.handle, old.instance, prev.text, prev.typed, old.load, old);
        } finally {
          if (!old.load.insts.size) await this.endLoad(old.load);
        }
        throw err;
      }
    });
  }

  /** Unloads everything (agent shutdown). */
  stopAll(): Promise<void> {
    return this.serial(async () => {
      for (const i of [...this.instances.values()].reverse()) await this.stop(i);
      for (const l of [...this.loads]) await this.endLoad(l);
      this.watchdog?.();
      this.watchdog = null;
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
        `probe ${q.probe} (this module) was stuck in its code for ${q.stalledMs} ms at ${new Date(q.at).toISOString()}; the agent quarantined it and refuses it until a different module is pushed`,
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
    const code = mod.code ?? new Uint8Array();
    const load = this.newLoad(manifest, digest, code);
    const started: ProbeInstance[] = [];
    try {
      await load.worker.ready;
      for (let n = 0; n < count; n++) {
        const p = perInstance[n]!;
        started.push(await this.start(this.nextHandle++, n, p.text, p.typed, load, { digest, code, manifestBytes }));
      }
    } catch (err) {
      for (const s of started.reverse()) await this.stop(s, true);
      await this.endLoad(load);
      throw err;
    }
    return started.map((s) => s.describe());
  }

  private newLoad(manifest: ProbeManifest, digest: Buffer, code: Uint8Array): Load {
    const events = manifest.events.map((e) => ({ id: e.id, name: e.name, payload: e.payload }));
    // The worker is made before the load is, and its callbacks only run later.
    // eslint-disable-next-line prefer-const
    let load: Load;
    const worker = new ProbeWorker({
      name: manifest.name,
      code,
      events,
      caps: { ...this.s.caps },
      tracefsPath: this.s.tracefs?.path ?? '',
      ringFull: this.ringFull,
      onCall: (op, args) => this.onCall(load, op, args),
      onOut: (items) => this.onOut(load, items),
      onDeath: (why, err) => this.onDeath(load, why, err),
      onConsole: (text) => this.s.log.info({ probe: manifest.name, console: text.trimEnd() }, 'probe console output'),
    });
    load = {
      manifest,
      digest,
      worker,
      insts: new Map(),
      handles: new Set(),
      byEventId: new Map(manifest.events.map((e) => [e.id, e.payload])),
    };
    if (this.s.onThread) worker.worker.once('online', this.s.onThread);
    this.loads.add(load);
    if (!this.watchdog) this.watchdog = onTick(checkMsFor(this.s.loopStallMs ?? 3000), () => this.checkWorkers());
    return load;
  }

  /** The load is over: its worker ends (its instances were released). */
  private async endLoad(load: Load): Promise<void> {
    this.loads.delete(load);
    await load.worker.kill('stopped');
  }

  private async start(
    handle: number,
    instance: number,
    text: Record<string, string>,
    typed: Record<string, ParamValue>,
    load: Load,
    from: { digest: Buffer; code: Uint8Array; manifestBytes: Uint8Array },
  ): Promise<ProbeInstance> {
    const manifest = load.manifest;
    const inst = new ProbeInstance(handle, manifest, instance, text, load, from.digest, from.code, from.manifestBytes);
    load.insts.set(handle, inst);
    load.handles.add(handle);
    this.holding.add(inst);
    try {
      await load.worker.request({ t: 'start', handle, instance, params: typed });
      if (inst.faulted) throw new VesperError(ErrorCode.PROBE_CRASHED, `probe ${manifest.name}#${instance} crashed while it started`);
      inst.trace?.start();
    } catch (err) {
      load.insts.delete(handle);
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

  /** Tears the instance down in its worker (if that still runs), then releases what it attached. */
  private async stop(inst: ProbeInstance, keepWorker = false): Promise<void> {
    if (inst.stopped) return;
    inst.stopped = true;
    this.instances.delete(inst.handle);
    const load = inst.load;
    if (load.worker.alive)
      try {
        const warn = await load.worker.request({ t: 'stop', handle: inst.handle });
        if (warn) this.s.log.warn({ probe: inst.manifest.name, err: warn }, 'probe teardown threw');
      } catch (err) {
        this.s.log.warn({ probe: inst.manifest.name, err: (err as Error).message }, 'probe teardown did not finish');
      }
    load.insts.delete(inst.handle);
    await this.release(inst);
    if (!keepWorker && !load.insts.size) await this.endLoad(load);
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
    this.holding.delete(inst);
  }

  /** A probe failed (threw, crashed its worker, or looped): report it once, unload it, keep going. */
  private fault(inst: ProbeInstance, code: string, message: string, stack = message): void {
    if (inst.faulted) return;
    inst.faulted = true;
    this.faults++;
    this.s.log.error(
      { probe: inst.manifest.name, instance: inst.instance, handle: inst.handle, code, err: stack },
      code === ErrorCode.PROBE_LOOPED ? 'probe stuck in its code; worker terminated, unloading it' : 'probe crashed; unloading it',
    );
    this.agentRecord({
      probeFault: { handle: inst.handle, probe: inst.manifest.name, instance: inst.instance, code, message, unloaded: true },
    });
    if (this.instances.has(inst.handle)) void this.serial(() => this.stop(inst));
  }

  /** One look at every worker: one stuck for loopStallMs is terminated and its module quarantined. */
  private checkWorkers(): void {
    const stallMs = this.s.loopStallMs ?? 3000;
    for (const load of this.loads) {
      if (!load.worker.stalled(checkMsFor(stallMs), stallMs)) continue;
      const q: QuarantineEntry = {
        digest: load.digest.toString('hex'),
        probe: load.manifest.name,
        handle: load.insts.keys().next().value ?? 0,
        stalledMs: load.worker.stalledMs,
        at: Date.now(),
        told: true, // this agent tells the host itself (onDeath)
      };
      this.s.quarantined?.set(q.digest, q);
      if (this.s.quarantineFile)
        try {
          appendQuarantine(this.s.quarantineFile, q);
        } catch (err) {
          this.s.log.warn({ file: this.s.quarantineFile, err: (err as Error).message }, 'could not write the quarantine file');
        }
      this.s.log.error({ probe: q.probe, stalledMs: q.stalledMs, digest: q.digest }, 'probe stuck in its code; quarantined');
      this.loads.delete(load);
      void load.worker.kill('looped');
    }
  }

  /** The worker is gone unasked: every instance it ran is reported and released here. */
  private onDeath(load: Load, why: 'looped' | 'crashed', err: Error | null): void {
    this.loads.delete(load);
    const stalled = load.worker.stalledMs;
    for (const inst of load.insts.values()) {
      // An instance still starting fails its load instead (start() sees the worker die).
      if (!this.instances.has(inst.handle)) continue;
      if (why === 'looped')
        this.fault(
          inst,
          ErrorCode.PROBE_LOOPED,
          `stuck in its code for ${stalled} ms; its worker was terminated and the module quarantined`,
        );
      else this.fault(inst, ErrorCode.PROBE_CRASHED, err?.message ?? 'its worker exited', err?.stack);
    }
  }

  /** What the worker sends: records, log lines, losses, faults. */
  private onOut(load: Load, items: WorkerOut[]): void {
    for (const it of items) {
      const h = it[1];
      // A worker speaks for its own instances only.
      if (!load.handles.has(h)) continue;
      switch (it[0]) {
        case 'rec': {
          const [, , eventId, , body, mono] = it;
          const payload = load.byEventId.get(eventId);
          if (!payload) continue;
          const rec: pb.IRecord = { monoNs: mono, wallNs: this.s.clock.wallFromMono(mono), handle: h, eventId };
          (rec as Record<string, unknown>)[payload] = body ?? {};
          this.append(rec);
          break;
        }
        case 'log': {
          const inst = load.insts.get(h);
          this.s.log.info({ probe: load.manifest.name, instance: inst?.instance }, it[2]);
          break;
        }
        case 'lost': {
          this.agentRecord((mono) => ({
            loss: { source: v1.LossEvent.Source.PROBE, count: it[2], firstMonoNs: mono, lastMonoNs: mono, handle: h },
          }));
          break;
        }
        case 'fault': {
          const inst = load.insts.get(h);
          if (inst) this.fault(inst, ErrorCode.PROBE_CRASHED, it[2], it[3]);
          break;
        }
      }
    }
    // Awake anyway: the shared tick's work runs in this turn, not in a wake-up of its own. After
    // the records just appended have gone out (the session's pump is queued the same way, and
    // before): the tick's work never delays them.
    if (!this.pokeQueued) {
      this.pokeQueued = true;
      setImmediate(this.pokeNow);
    }
  }

  private pokeQueued = false;
  private readonly pokeNow = (): void => {
    this.pokeQueued = false;
    poke();
  };

  /** A synchronous context call from a probe's worker; done here, where the kernel side lives. */
  private onCall(load: Load, op: string, args: unknown[]): unknown {
    const s = this.s;
    if (op === 'hasTraceEvent') {
      const [system, event, field] = args as [string, string, string | undefined];
      if (!s.tracefs?.hasEvent(system, event)) return false;
      return field ? s.tracefs.format(system, event).has(field) : true;
    }
    const handle = args[0] as number;
    const inst = load.insts.get(handle);
    if (!inst || inst.stopped)
      throw new VesperError(ErrorCode.PROBE_NOT_FOUND, `probe ${load.manifest.name}: no running instance with handle ${handle}`);
    const own = (what: string, release: Release): void => {
      inst.resources.push({ what, release });
    };
    const to =
      <T>(hid: number) =>
      (payload: T): void =>
        this.deliver(inst, hid, payload);
    switch (op) {
      case 'trace': {
        const [, system, event, filter, hid, fields] = args as [number, string, string, string, number, string[] | undefined];
        const t = this.traceInstance(inst);
        const fmt = t.enable(system, event, filter, fields);
        inst.traceHandlers.set(fmt.id, hid);
        if (this.instances.has(handle)) t.start(); // called after setup: read from now on
        return undefined;
      }
      case 'kprobe': {
        const [, spec, filter, hid] = args as [number, string, string, number];
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
        inst.traceHandlers.set(fmt.id, hid);
        if (this.instances.has(handle)) t.start();
        return name;
      }
      case 'kmsg': {
        const [, hid, match] = args as [number, number, unknown];
        if (!s.caps.kmsg) throw new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, '/dev/kmsg cannot be read here');
        if (match !== undefined && (!Array.isArray(match) || !match.every((m) => typeof m === 'string' && m !== '')))
          throw new VesperError(ErrorCode.PROBE_LOAD_FAILED, `probe ${load.manifest.name}: kmsg match must be a list of non-empty strings`);
        const fn = to<KmsgLine>(hid);
        // Filtered here, so that lines the probe does not want never cross to its worker.
        const off = s.kmsg.subscribe(match?.length ? (l) => (match as string[]).some((m) => l.text.includes(m)) && fn(l) : fn);
        own('kernel log subscription', off);
        return undefined;
      }
      case 'pressure': {
        const [, o, hid] = args as [
          number,
          { resource: 'memory' | 'io' | 'cpu'; kind: 'some' | 'full'; thresholdUs: number; windowUs: number; cgroup?: string },
          number,
        ];
        const file = pressureFile(o.resource, o.cgroup);
        if (!readPressure(file, o.kind))
          throw new VesperError(
            ErrorCode.PSI_UNAVAILABLE,
            `no ${o.kind} line in ${file} (kernel without CONFIG_PSI, psi=0, or no such cgroup)`,
          );
        const w = new PressureWatcher(file, o.resource, o.kind, o.thresholdUs, o.windowUs, to<PsiSample>(hid));
        w.start();
        own(`pressure watcher ${file}`, () => w.stop());
        return undefined;
      }
      case 'lacks': {
        const message = String(args[1]).slice(0, 512);
        if (inst.warnings.length < 16 && !inst.warnings.some((w) => w.message === message)) {
          inst.warnings.push({ code: ErrorCode.KERNEL_LACKS, message });
          s.log.warn({ probe: load.manifest.name, instance: inst.instance }, `this kernel lacks: ${message}`);
        }
        return undefined;
      }
      case 'memoryEvents': {
        const [, path, hid] = args as [number, string, number];
        const w = new MemoryEventsWatcher(path, to<Record<string, number>>(hid));
        try {
          w.start();
        } catch (err) {
          throw new VesperError(ErrorCode.CGROUP_UNAVAILABLE, `cannot watch ${w.file}: ${(err as Error).message}`);
        }
        own(`memory.events watcher ${w.file}`, () => w.stop());
        return undefined;
      }
    }
    throw new VesperError(ErrorCode.PROTOCOL_UNEXPECTED, `probe ${load.manifest.name} asked for ${op}, which the context has not`);
  }

  /** Hands an event to the instance's worker, or counts it lost when the worker is far behind. */
  private deliver(inst: ProbeInstance, hid: number, payload: unknown): void {
    if (inst.stopped) return;
    const w = inst.load.worker;
    if (w.backlog < (this.s.maxBacklog ?? 16_384)) {
      w.deliver(hid, payload);
      return;
    }
    if (inst.dropped++ > 0) return;
    inst.droppedFirst = this.s.clock.now().mono;
    // Told once per turn of this thread, as one loss record.
    queueMicrotask(() => {
      this.agentRecord((mono) => ({
        loss: {
          source: v1.LossEvent.Source.PROBE,
          count: inst.dropped,
          firstMonoNs: inst.droppedFirst,
          lastMonoNs: mono,
          handle: inst.handle,
        },
      }));
      this.s.log.warn({ probe: inst.manifest.name, dropped: inst.dropped }, "events dropped: the probe's worker is not keeping up");
      inst.dropped = 0;
    });
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
            if (h !== undefined) this.deliver(inst, h, { ts, cpu, pid: fields['common_pid'] as number, fields } satisfies TraceEvent);
          },
          missed: (count: number, ts: number, cpu: number) => {
            const rec: pb.IRecord = {
              monoNs: ts,
              wallNs: this.s.clock.wallFromMono(ts),
              handle: 0,
              eventId: 0,
              loss: { source: v1.LossEvent.Source.KERNEL_RING, count, firstMonoNs: ts, lastMonoNs: ts, handle: inst.handle, cpu },
            };
            this.append(rec);
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
}
