// libvirt's domain events, pushed as they happen, from a supervised
// `virsh -c URI event --all --loop --timestamp`. @unraid/libvirt has no event API, and virsh is
// libvirt's own client, so its output format is stable and documented by its source
// (tools/virsh-domain-event.c). Lines seen on libvirt 9.0:
//
//   2026-11-22 05:57:34.991+0000: event 'lifecycle' for domain 'vm1': Started Booted
//   2026-11-22 05:57:35.530+0000: event 'watchdog' for domain 'vm1': none
//   2026-11-22 05:57:38.573+0000: event 'lifecycle' for domain 'vm1': Crashed Panicked
//   2026-11-22 05:57:39.983+0000: event 'lifecycle' for domain 'vm1': Stopped Crashed
//   2026-11-22 05:56:56.309+0000: event 'device-added' for domain 'vm1': channel1
//   ...: event 'agent-lifecycle' for domain 'vm1': state: 'connected' reason: 'channel event'
//   ...: event 'reboot' for domain 'vm1'
//
// virsh exits when it loses libvirtd (restart, crash); it is then restarted with backoff.
// Events that happen while no virsh is registered are lost: on 'ready' after a restart, reconcile
// with Hypervisor.state(). Readiness is observed, not guessed: libvirt's own debug log (for the
// "libvirt.domain" module only) shows each virConnectDomainEventRegisterAny call as it starts,
// and the calls are made one after the other in event-id order.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';

export type LibvirtEventKind =
  'lifecycle' | 'reboot' | 'watchdog' | 'io-error' | 'panic' | 'device-added' | 'device-removed' | 'agent-lifecycle' | 'other';

export interface LibvirtEvent {
  /** when libvirt's client saw it (virsh's timestamp), else when we read it */
  at: Date;
  /** domain name, '' for lines that are not domain events */
  domain: string;
  kind: LibvirtEventKind;
  /** libvirt's event name as virsh prints it ('lifecycle', 'io-error-reason', 'rtc-change', ...), '' if unparsed */
  name: string;
  /** lifecycle: 'Started', 'Stopped', 'Crashed'...; agent-lifecycle: 'connected' / 'disconnected' */
  event?: string;
  /** lifecycle detail ('Booted', 'Destroyed', 'Panicked', 'Finished after guest request'); io-error and agent reasons */
  reason?: string;
  /** watchdog and io-error action: 'none', 'pause', 'reset', 'poweroff', 'report'... */
  action?: string;
  /** device alias (device-added/-removed, io-error) */
  device?: string;
  /** everything after "for domain 'x': ", with continuation lines of multi-line events */
  detail?: string;
  raw: string;
}

// Optional virsh timestamp "2026-11-22 05:57:34.991+0000: ", then the event header. The domain
// name is matched lazily so a payload containing quotes does not extend it; disk-change and
// tray-change put " disk ALIAS" between the domain and the colon; reboot has no payload at all.
const HEADER =
  /^(?:(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(\d\d): )?event '([^']+)' for domain '(.*?)'(?: disk (\S+))?(?::\s?(.*))?$/;

/** Parses one line of `virsh event --timestamp` output; anything unrecognised becomes kind 'other'. */
export function parseEventLine(line: string, now: Date = new Date()): LibvirtEvent {
  const m = HEADER.exec(line);
  if (!m) return { at: now, domain: '', kind: 'other', name: '', raw: line };
  const [, date, time, tzH, tzM, name = '', domain = '', disk, detail] = m;
  const at = date ? new Date(`${date}T${time}${tzH}:${tzM}`) : now;
  const ev: LibvirtEvent = { at: Number.isNaN(at.getTime()) ? now : at, domain, kind: 'other', name, raw: line };
  if (detail !== undefined) ev.detail = detail;
  if (disk !== undefined) ev.device = disk;
  const text = detail ?? '';
  switch (name) {
    case 'lifecycle': {
      // "<Event> <detail>": event words are single words, details may have spaces.
      const sp = text.indexOf(' ');
      ev.event = sp < 0 ? text : text.slice(0, sp);
      ev.reason = sp < 0 ? '' : text.slice(sp + 1);
      // A guest panic (pvpanic / isa panic device) is the one lifecycle event that is a failure
      // report in itself; 'Stopped Crashed' that follows stays 'lifecycle'.
      ev.kind = ev.event === 'Crashed' ? 'panic' : 'lifecycle';
      break;
    }
    case 'reboot':
      ev.kind = 'reboot';
      break;
    case 'watchdog':
      ev.kind = 'watchdog';
      ev.action = text;
      break;
    case 'io-error-reason': {
      // "<path> (<alias>) <action> due to <reason>". libvirt sends every I/O error twice, as
      // 'io-error' and as this superset; only this one is kind 'io-error', so it counts once.
      const io = /^(.*) \(([^()]*)\) (\S+) due to (.*)$/.exec(text);
      ev.kind = 'io-error';
      if (io) [ev.device, ev.action, ev.reason] = [io[2], io[3], io[4]];
      break;
    }
    case 'device-added':
    case 'device-removed':
      ev.kind = name;
      ev.device = text;
      break;
    case 'agent-lifecycle': {
      const ag = /state: '([^']*)' reason: '([^']*)'/.exec(text);
      ev.kind = 'agent-lifecycle';
      if (ag) [ev.event, ev.reason] = [ag[1], ag[2]];
      break;
    }
  }
  return ev;
}

/**
 * Turns a byte stream of virsh event output into events. Partial lines wait for their newline.
 * Multi-line events (tunable, job-completed, graphics identities) print their extra lines in the
 * same write as the header, so continuation lines in the same chunk join the event before it;
 * each event is handed out at the end of the chunk it arrived in, never held for a later one.
 */
export class EventLineParser {
  private partial = '';

  push(chunk: string, now: Date = new Date()): LibvirtEvent[] {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    const out: LibvirtEvent[] = [];
    // A header ending in ':' (tunable, job-completed, memory-failure) opens a block of lines;
    // graphics appends tab-indented identities to a one-line header.
    let open = false;
    for (const line of lines) {
      if (line === '') continue;
      const last = out[out.length - 1];
      const ev = parseEventLine(line, now);
      if (ev.name === '' && last && (open || line.startsWith('\t'))) {
        last.detail = last.detail ? `${last.detail}\n${line}` : line;
        last.raw += `\n${line}`;
        continue;
      }
      out.push(ev);
      open = ev.name !== '' && ev.detail === '';
    }
    return out;
  }
}

export interface LibvirtEventsOptions {
  /** libvirt connection URI (default qemu:///system) */
  uri?: string;
  /** virsh binary (default: virsh from PATH) */
  virsh?: string;
  /** first restart delay, doubled per quick failure up to maxBackoffMs (default 250 ms / 10 s) */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** a virsh that ran this long resets the backoff (default 10 s) */
  stableMs?: number;
}

export interface LibvirtEventsExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** virsh's last error lines (e.g. "Disconnected from qemu:///system due to end of file") */
  stderr: string;
  /** ms until the next start, -1 when stopped */
  restartInMs: number;
}

// Event ids are libvirt ABI (virDomainEventID, never renumbered). Vesper's kinds use ids 0..19
// (lifecycle 0 ... agent-lifecycle 18, device-added 19); registration is sequential, so once the
// call for id 20 has started, everything vesper classifies is registered.
const READY_AT_EVENT_ID = 20;
const REGISTER_LOG = /virConnectDomainEventRegisterAny:\d+ : .*\beventID=(\d+)/;
// Any libvirt debug/info log line: "2026-11-22 05:58:24.426+0000: 25219: debug : ..."
const LIBVIRT_LOG = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d{4}: \d+: \w+ : /;

// Typed event signatures for the class below (the usual EventEmitter pattern).
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface LibvirtEvents {
  on(ev: 'event', fn: (e: LibvirtEvent) => void): this;
  on(ev: 'ready', fn: () => void): this;
  on(ev: 'exit', fn: (x: LibvirtEventsExit) => void): this;
  once(ev: 'event', fn: (e: LibvirtEvent) => void): this;
  once(ev: 'ready', fn: () => void): this;
  once(ev: 'exit', fn: (x: LibvirtEventsExit) => void): this;
  off(ev: 'event', fn: (e: LibvirtEvent) => void): this;
  off(ev: 'ready', fn: () => void): this;
  off(ev: 'exit', fn: (x: LibvirtEventsExit) => void): this;
  emit(ev: 'event', e: LibvirtEvent): boolean;
  emit(ev: 'ready'): boolean;
  emit(ev: 'exit', x: LibvirtEventsExit): boolean;
}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class LibvirtEvents extends EventEmitter {
  readonly uri: string;
  private readonly virshBin: string;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly stableMs: number;
  private child: ChildProcess | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private backoffMs: number;
  private running = false;
  private readyNow = false;

  /** `uriOrOpts`: a connection URI, or options; undefined means qemu:///system. */
  constructor(uriOrOpts: string | LibvirtEventsOptions = {}) {
    super();
    const opts = typeof uriOrOpts === 'string' ? { uri: uriOrOpts } : uriOrOpts;
    this.uri = opts.uri ?? 'qemu:///system';
    this.virshBin = opts.virsh ?? 'virsh';
    this.minBackoffMs = opts.minBackoffMs ?? 250;
    this.maxBackoffMs = opts.maxBackoffMs ?? 10_000;
    this.stableMs = opts.stableMs ?? 10_000;
    this.backoffMs = this.minBackoffMs;
  }

  /** True while a virsh is running with its event callbacks registered. */
  get ready(): boolean {
    return this.readyNow;
  }

  start(): this {
    if (!this.running) {
      this.running = true;
      this.spawnVirsh();
    }
    return this;
  }

  /** Resolves once events are being received (now, or at the next 'ready'); bounded. */
  whenReady(timeoutMs = 30_000): Promise<void> {
    if (this.readyNow) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('ready', onReady);
        reject(new Error(`virsh event did not register with ${this.uri} within ${timeoutMs} ms`));
      }, timeoutMs);
      const onReady = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.once('ready', onReady);
    });
  }

  /** Stops supervising and ends virsh (SIGTERM, SIGKILL after 2 s). */
  async stop(): Promise<void> {
    this.running = false;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const closed = new Promise<void>((r) => child.once('close', () => r()));
    child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), 2_000);
    await closed;
    clearTimeout(kill);
  }

  private spawnVirsh(): void {
    this.restartTimer = null;
    const startedAt = Date.now();
    const args = ['-c', this.uri, 'event', '--all', '--loop', '--timestamp'];
    // Under setpriv --pdeathsig: a vesperd killed with SIGKILL takes its virsh with it (without,
    // virsh ran on until its next write found the pipe closed, hours later on a quiet host).
    const setpriv = findInPath('setpriv');
    const viaSetpriv = setpriv !== null && findInPath(this.virshBin) !== null;
    const child = spawn(viaSetpriv ? setpriv : this.virshBin, viaSetpriv ? ['--pdeathsig', 'KILL', '--', this.virshBin, ...args] : args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        LC_ALL: 'C', // the parser reads untranslated event words
        // Debug log of the "libvirt.domain" module only, on stderr: shows the registrations
        // (readiness, above) and otherwise one short line per event, which is ignored.
        LIBVIRT_LOG_OUTPUTS: '1:stderr',
        LIBVIRT_LOG_FILTERS: '1:libvirt.domain',
      },
    });
    this.child = child;
    const parser = new EventLineParser();
    const errors: string[] = [];
    let errPartial = '';
    let done = false;

    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      for (const ev of parser.push(chunk)) this.emit('event', ev);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (errPartial + chunk).split('\n');
      errPartial = lines.pop() ?? '';
      for (const line of lines) {
        const reg = REGISTER_LOG.exec(line);
        if (reg && Number(reg[1]) >= READY_AT_EVENT_ID && !this.readyNow && this.child === child) {
          this.readyNow = true;
          this.emit('ready');
        } else if (line.trim() && !LIBVIRT_LOG.test(line)) {
          errors.push(line.replace(/^error: /, ''));
          if (errors.length > 5) errors.shift();
        }
      }
    });

    const onGone = (code: number | null, signal: NodeJS.Signals | null, spawnError?: Error): void => {
      if (done) return;
      done = true;
      if (this.child === child) this.child = null;
      this.readyNow = false;
      if (spawnError) errors.push(spawnError.message);
      if (Date.now() - startedAt >= this.stableMs) this.backoffMs = this.minBackoffMs;
      const restartInMs = this.running ? this.backoffMs : -1;
      this.emit('exit', { code, signal, stderr: errors.join('\n'), restartInMs });
      if (!this.running) return;
      this.restartTimer = setTimeout(() => this.spawnVirsh(), restartInMs);
      this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
    };
    // 'error' without a pid: it never started (virsh not installed); otherwise 'close' follows.
    child.on('error', (err) => {
      if (child.pid === undefined) onGone(null, null, err);
    });
    child.on('close', (code, signal) => onGone(code, signal));
  }
}

/** The path of an executable: `bin` itself when it holds a slash, else the first match in PATH. */
function findInPath(bin: string): string | null {
  const ok = (p: string): boolean => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (bin.includes('/')) return ok(bin) ? bin : null;
  for (const dir of (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':'))
    if (dir && ok(join(dir, bin))) return join(dir, bin);
  return null;
}
