// tracefs: the kernel's event tracing file system, the agent's main source of events.
//
// Every probe instance gets its own tracing instance (instances/<name>): its own ring
// buffer, its own event enables and its own in-kernel `filter` files, so two probes (or two
// instances of one probe) never fight over a filter, and the kernel drops what nobody wants
// before it is ever copied out. Records are read as binary pages from
// per_cpu/cpuN/trace_pipe_raw, one blocking reader per CPU on libuv's thread pool: no text
// formatting in the kernel, no polling, and an idle reader costs nothing.
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { onlineCpus } from './cpus.js';
import { EventFormat, type FieldValue } from './event-format.js';
import { walkPage } from './ring-page.js';

const CANDIDATES = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'];
/** Reads closer together than this mean events are streaming, not trickling. */
const LINGER_WHEN_WITHIN_MS = 5;
/** A streaming read with fewer events than this waits LINGER_MS before the next one. */
const LINGER_BELOW_EVENTS = 32;
const LINGER_MS = 2;

/** Finds a mounted tracefs, mounting it at /sys/kernel/tracing if that is empty and we may. */
export function locateTracefs(explicit?: string): { path: string | null; why: string } {
  if (explicit) {
    return fs.existsSync(join(explicit, 'events'))
      ? { path: explicit, why: '' }
      : { path: null, why: `no tracefs at ${explicit} (no events/ directory)` };
  }
  for (const p of CANDIDATES) if (fs.existsSync(join(p, 'events'))) return { path: p, why: '' };
  if (fs.existsSync(CANDIDATES[0]!)) {
    try {
      // mount(8) is the portable way from Node; a failure is reported, not fatal.
      execFileSync('mount', ['-t', 'tracefs', 'nodev', CANDIDATES[0]!], { stdio: 'ignore', timeout: 5000 });
      if (fs.existsSync(join(CANDIDATES[0]!, 'events'))) return { path: CANDIDATES[0]!, why: '' };
    } catch {
      /* fall through */
    }
  }
  return { path: null, why: 'tracefs is not mounted at /sys/kernel/tracing and could not be mounted' };
}

export interface TraceHandler {
  event(fmt: EventFormat, fields: Record<string, FieldValue>, tsNs: number, cpu: number): void;
  missed(count: number, tsNs: number, cpu: number): void;
  readError(err: VesperError): void;
}

/** Counts blocking readers so they never take every libuv thread-pool thread. */
export class ReaderBudget {
  used = 0;
  constructor(readonly max: number) {}
  take(n: number): void {
    if (this.used + n > this.max)
      throw new VesperError(
        ErrorCode.TRACEFS_READERS_EXHAUSTED,
        `no room for ${n} more tracefs readers (${this.used} of ${this.max} in use); unload a probe or raise UV_THREADPOOL_SIZE`,
      );
    this.used += n;
  }
  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

export class TraceFs {
  readonly path: string;
  readonly cpus: number[];
  readonly pageSize: number;
  readonly kprobes: boolean;
  private readonly formats = new Map<string, EventFormat>();

  constructor(
    path: string,
    readonly budget: ReaderBudget,
  ) {
    this.path = path;
    this.cpus = onlineCpus();
    this.pageSize = readPageSize(path);
    this.kprobes = fs.existsSync(join(path, 'kprobe_events'));
  }

  eventDir(system: string, event: string): string {
    return join(this.path, 'events', system, event);
  }

  hasEvent(system: string, event: string): boolean {
    return fs.existsSync(join(this.eventDir(system, event), 'format'));
  }

  format(system: string, event: string): EventFormat {
    const key = `${system}/${event}`;
    let f = this.formats.get(key);
    if (!f) {
      let text: string;
      try {
        text = fs.readFileSync(join(this.eventDir(system, event), 'format'), 'utf8');
      } catch {
        throw new VesperError(ErrorCode.TRACEFS_EVENT_MISSING, `this kernel has no trace event ${key}`);
      }
      f = EventFormat.parse(text);
      this.formats.set(key, f);
    }
    return f;
  }

  forgetFormat(system: string, event: string): void {
    this.formats.delete(`${system}/${event}`);
  }

  /** Removes instances left behind by an agent that died without cleaning up. */
  removeStaleInstances(prefix: string): string[] {
    const removed: string[] = [];
    const dir = join(this.path, 'instances');
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return removed;
    }
    for (const name of names) {
      if (!name.startsWith(prefix)) continue;
      const pid = Number(/^[^.]*\.(\d+)\./.exec(name)?.[1]);
      if (pid && fs.existsSync(`/proc/${pid}`)) continue;
      try {
        disableAll(join(dir, name));
        fs.rmdirSync(join(dir, name));
        removed.push(name);
      } catch {
        /* still busy: try again next start */
      }
    }
    return removed;
  }

  createInstance(name: string, handler: TraceHandler, bufferKb: number): TraceInstance {
    const dir = join(this.path, 'instances', name);
    try {
      fs.mkdirSync(dir);
    } catch (err) {
      throw new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, `cannot create tracing instance ${name}: ${(err as Error).message}`);
    }
    const inst = new TraceInstance(this, dir, handler);
    try {
      writeKnob(join(dir, 'trace_clock'), 'mono');
      writeKnob(join(dir, 'buffer_size_kb'), String(bufferKb));
      // Wake a reader on every event, not when a page is half full.
      if (fs.existsSync(join(dir, 'buffer_percent'))) writeKnob(join(dir, 'buffer_percent'), '0');
    } catch (err) {
      try {
        fs.rmdirSync(dir);
      } catch {
        /* nothing more to do */
      }
      throw err;
    }
    return inst;
  }

  // ------------------------------------------------------------ kprobes

  /** Defines a kprobe event vesper/<name>; `spec` is "<symbol>[+off] [fetchargs...]" or with a leading "p:"/"r:". */
  addKprobe(name: string, spec: string): void {
    if (!this.kprobes)
      throw new VesperError(ErrorCode.KPROBE_UNAVAILABLE, 'this kernel has no kprobe_events (CONFIG_KPROBE_EVENTS is off)');
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new VesperError(ErrorCode.KPROBE_BAD_DEFINITION, `bad kprobe name ${name}`);
    if (/[\n;]/.test(spec)) throw new VesperError(ErrorCode.KPROBE_BAD_DEFINITION, 'a kprobe definition is one line');
    const m = /^\s*(?:([pr]):\S*\s+)?(.+)$/.exec(spec);
    const type = m?.[1] ?? 'p';
    const rest = (m?.[2] ?? '').trim();
    if (!rest) throw new VesperError(ErrorCode.KPROBE_BAD_DEFINITION, 'empty kprobe definition');
    try {
      fs.appendFileSync(join(this.path, 'kprobe_events'), `${type}:vesper/${name} ${rest}\n`);
    } catch (err) {
      // The kernel says only ENOENT for a function it does not have: name it, and its near names.
      const symbol = /^([A-Za-z_][\w.]*)(?:\+\S+)?$/.exec(rest.split(/\s+/)[0]!)?.[1];
      const known = symbol ? kallsyms(symbol) : null;
      if (symbol && known && !known.found)
        throw new VesperError(
          ErrorCode.KPROBE_NO_SYMBOL,
          `this kernel (${release()}) has no function ${symbol} to probe (renamed, inlined or compiled out)` +
            (known.near.length ? `; it has ${known.near.join(', ')}` : ''),
        );
      throw new VesperError(
        ErrorCode.KPROBE_BAD_DEFINITION,
        `the kernel refused kprobe "${rest}": ${(err as Error).message}${this.lastError()}`,
      );
    }
  }

  removeKprobe(name: string): void {
    this.forgetFormat('vesper', name);
    try {
      fs.appendFileSync(join(this.path, 'kprobe_events'), `-:vesper/${name}\n`);
    } catch {
      /* already gone */
    }
  }

  lastError(): string {
    try {
      const log = fs.readFileSync(join(this.path, 'error_log'), 'utf8').trim().split('\n');
      const tail = log.slice(-3).join(' | ').trim();
      return tail ? ` (${tail})` : '';
    } catch {
      return '';
    }
  }
}

/**
 * Whether /proc/kallsyms names `symbol`, and up to three names made from it (the compiler's
 * clones: foo.isra.0, foo.constprop.0, foo.cold); null when it cannot be read. Read only after
 * the kernel refused a kprobe: the file is megabytes long.
 */
export function kallsyms(symbol: string, text?: string): { found: boolean; near: string[] } | null {
  if (text === undefined)
    try {
      text = fs.readFileSync('/proc/kallsyms', 'utf8');
    } catch {
      return null;
    }
  const near: string[] = [];
  for (const line of text.split('\n')) {
    const name = line.split(/\s+/)[2];
    if (name === symbol) return { found: true, near: [] };
    if (name !== undefined && near.length < 3 && name.startsWith(`${symbol}.`) && !near.includes(name)) near.push(name);
  }
  return { found: false, near };
}

function readPageSize(path: string): number {
  try {
    const text = fs.readFileSync(join(path, 'events/header_page'), 'utf8');
    const m = /field: char data;\s*offset:(\d+);\s*size:(\d+);/.exec(text);
    if (m) return Number(m[1]) + Number(m[2]);
  } catch {
    /* default below */
  }
  return 4096;
}

function writeKnob(file: string, value: string): void {
  fs.writeFileSync(file, value);
}

function disableAll(dir: string): void {
  try {
    fs.writeFileSync(join(dir, 'events/enable'), '0');
  } catch {
    /* best effort */
  }
}

interface Reader {
  cpu: number;
  fd: number;
  done: Promise<void>;
}

export class TraceInstance {
  private readonly byId = new Map<number, EventFormat>();
  private readonly enabled: string[] = [];
  private readers: Reader[] = [];
  private stopping = false;
  private removed = false;
  eventsRead = 0;
  pagesRead = 0;

  constructor(
    readonly fs_: TraceFs,
    readonly dir: string,
    private readonly handler: TraceHandler,
  ) {}

  /**
   * Enables system/event in this instance with an in-kernel filter ("" for none). `fields`: those
   * the probe reads; a format without one of them refuses the event (VSP_TRACEFS_FIELD_MISSING)
   * before anything is enabled, rather than handing the probe undefined values.
   */
  enable(system: string, event: string, filter = '', fields: readonly string[] = []): EventFormat {
    const fmt = this.fs_.format(system, event);
    const missing = fmt.missing(fields);
    if (missing.length)
      throw new VesperError(
        ErrorCode.TRACEFS_FIELD_MISSING,
        `this kernel (${release()}) has no field ${missing.join(', ')} in trace event ${system}/${event}`,
        `its fields: ${fmt.fields
          .map((f) => f.name)
          .filter((n) => !n.startsWith('common_'))
          .join(', ')}`,
      );
    const edir = join(this.dir, 'events', system, event);
    if (filter) {
      try {
        fs.writeFileSync(join(edir, 'filter'), filter);
      } catch (err) {
        let why = '';
        try {
          why = fs.readFileSync(join(edir, 'filter'), 'utf8').trim();
        } catch {
          /* keep the errno text */
        }
        throw new VesperError(
          ErrorCode.TRACEFS_BAD_FILTER,
          `the kernel refused the filter for ${system}/${event}: ${filter}`,
          why || (err as Error).message,
        );
      }
    }
    fs.writeFileSync(join(edir, 'enable'), '1');
    this.enabled.push(`${system}/${event}`);
    this.byId.set(fmt.id, fmt);
    return fmt;
  }

  disable(system: string, event: string): void {
    try {
      fs.writeFileSync(join(this.dir, 'events', system, event, 'enable'), '0');
    } catch {
      /* the instance may be gone already */
    }
  }

  /** Starts one blocking reader per online CPU. */
  start(): void {
    if (this.readers.length) return;
    const cpus = this.fs_.cpus;
    this.fs_.budget.take(cpus.length);
    for (const cpu of cpus) {
      const fd = fs.openSync(join(this.dir, 'per_cpu', `cpu${cpu}`, 'trace_pipe_raw'), 'r');
      this.readers.push({ cpu, fd, done: this.readLoop(cpu, fd) });
    }
  }

  private readLoop(cpu: number, fd: number): Promise<void> {
    const buf = Buffer.alloc(this.fs_.pageSize);
    const visitor = {
      event: (b: Buffer, start: number, len: number, ts: number) => {
        const fmt = this.byId.get(b.readUInt16LE(start));
        if (!fmt) return; // trace_marker writes and anything we did not enable
        this.eventsRead++;
        this.handler.event(fmt, fmt.decode(b, start, len), ts, cpu);
      },
      missed: (count: number, ts: number) => this.handler.missed(count, ts, cpu),
    };
    return new Promise<void>((resolve) => {
      let errors = 0;
      let lastData = 0;
      const step = (): void => {
        fs.read(fd, buf, 0, buf.length, null, (err, n) => {
          if (this.stopping) {
            fs.close(fd, () => resolve());
            return;
          }
          if (err) {
            errors++;
            this.handler.readError(new VesperError(ErrorCode.TRACEFS_UNAVAILABLE, `reading cpu${cpu} trace buffer: ${err.message}`));
            if (errors > 100) {
              fs.close(fd, () => resolve());
              return;
            }
            setTimeout(step, 100);
            return;
          }
          let events = 0;
          if (n > 0) {
            this.pagesRead++;
            try {
              events = walkPage(buf, n, visitor);
            } catch (e) {
              this.handler.readError(VesperError.from(e));
            }
          }
          // A read wakes on the first event, so a lone event is told at once. When events
          // keep coming, each read would carry only a few of them and the wake-ups cost more
          // than the events (badly so under TCG); then wait a little and take a fuller page.
          const now = performance.now();
          const dense = events > 0 && events < LINGER_BELOW_EVENTS && now - lastData < LINGER_WHEN_WITHIN_MS;
          if (events > 0) lastData = now;
          if (dense) setTimeout(step, LINGER_MS);
          else step();
        });
      };
      step();
    });
  }

  /**
   * Stops the readers and removes the instance. A reader blocked in read() wakes only when
   * its CPU's buffer gets data, so we write a marker into the instance from each CPU.
   */
  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    this.stopping = true;
    for (const e of this.enabled) {
      const [system, event] = e.split('/');
      this.disable(system!, event!);
    }
    if (this.readers.length) {
      await wakeReaders(
        this.dir,
        this.readers.map((r) => r.cpu),
      );
      const all = Promise.all(this.readers.map((r) => r.done));
      const ok = await Promise.race([all.then(() => true), sleep(3000).then(() => false)]);
      if (!ok) {
        // One more try: a CPU may have gone offline or busy while we wrote.
        await wakeReaders(
          this.dir,
          this.readers.map((r) => r.cpu),
        );
        await Promise.race([all, sleep(2000)]);
      }
      this.fs_.budget.give(this.readers.length);
      this.readers = [];
    }
    for (let i = 0; i < 20; i++) {
      try {
        fs.rmdirSync(this.dir);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        await sleep(50);
      }
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** Puts a trace_marker write into each CPU's buffer of the instance, waking its reader. */
function wakeReaders(dir: string, cpus: number[]): Promise<void> {
  const marker = join(dir, 'trace_marker');
  if (cpus.length === 1) {
    try {
      fs.writeFileSync(marker, 'vesper: stop\n');
    } catch {
      /* instance gone */
    }
    return Promise.resolve();
  }
  return Promise.all(
    cpus.map(
      (cpu) =>
        new Promise<void>((resolve) => {
          execFile('taskset', ['-c', String(cpu), 'sh', '-c', 'printf "vesper: stop\\n" > "$1"', 'sh', marker], { timeout: 3000 }, () =>
            resolve(),
          );
        }),
    ),
  ).then(() => undefined);
}
