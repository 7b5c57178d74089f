// syslog sink: RFC 5424 messages, over TCP or a unix stream socket with octet-counting framing
// (RFC 6587 3.4.1: "LEN SP MSG"), or over UDP, one message a datagram (RFC 5426).
//
// Syslog has no application-level acknowledgement: a message the kernel took may still be lost
// if the receiver stops before reading it. So over a stream, what was written in the last
// REPLAY_MS (at most REPLAY_BYTES) is kept and written again first on the next connection after
// one broke: a receiver stopped in the middle of a storm gets everything, some of it twice
// (de-duplicate on the event's id, in the structured data and the JSON). That memory dies with
// vesperd, so the exporter also persists this sink's cursor REPLAY_MS late (unconfirmedMs): a
// vesperd killed while the receiver was away sends that window again after its restart. UDP
// has no way to know of a loss: it is best effort.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import type { ExportEvent, ExportSink } from './sink.js';
import { SYSLOG_FACILITIES } from '../config/sinks.js';

export interface SyslogParams {
  transport: 'tcp' | 'udp' | 'unix';
  address: string;
  facility: (typeof SYSLOG_FACILITIES)[number];
  app_name: string;
}

const REPLAY_MS = 10_000;
const REPLAY_BYTES = 32 << 20;
/** RFC 5424's private enterprise number for examples (32473) names vesper's SD-ID */
const SD_ID = 'vesper@32473';

const SEVERITY = { warning: 4, notice: 5, info: 6 } as const;

function sdValue(s: string): string {
  return s.replace(/[\\"\]]/g, (c) => `\\${c}`);
}

/** PRINTUSASCII, at most `max` characters, '-' when empty. */
function header(s: string, max: number): string {
  const t = s.replace(/[^!-~]/g, '_').slice(0, max);
  return t === '' ? '-' : t;
}

function isoMicros(us: number): string {
  const ms = Math.floor(us / 1000);
  const iso = new Date(ms).toISOString(); // 2026-12-07T07:00:00.123Z
  return `${iso.slice(0, 23)}${String(Math.floor(us % 1000)).padStart(3, '0')}Z`;
}

/** One event as an RFC 5424 message (without framing). */
export function formatRfc5424(e: ExportEvent, facility: number, appName: string): string {
  const sev = e.disposition === 'action' ? SEVERITY.warning : e.disposition === 'notify' ? SEVERITY.notice : SEVERITY.info;
  const sd =
    `[${SD_ID} id="${sdValue(e.eventId)}" vm="${sdValue(e.vm)}" plugin="${sdValue(e.plugin)}" event="${sdValue(e.event)}"` +
    (e.seq === null ? '' : ` seq="${e.seq}"`) +
    ']';
  return `<${facility * 8 + sev}>1 ${isoMicros(e.hostTimeUs)} ${header(e.host, 255)} ${header(appName, 48)} - ${header(`${e.plugin}.${e.event}`, 32)} ${sd} ${JSON.stringify(e)}`;
}

export class SyslogSink implements ExportSink {
  readonly kind = 'syslog';
  /** over a stream, what was written lately may die with the connection (see the top) */
  readonly unconfirmedMs: number;
  private sock: Socket | null = null;
  private udp: UdpSocket | null = null;
  private broken: Error | null = null;
  /** what was written lately, to be written again after a broken connection */
  private replay: { buf: Buffer; atMs: number }[] = [];
  private replayBytes = 0;
  private closed = false;
  private connecting: Promise<Socket> | null = null;
  private reviving: NodeJS.Timeout | null = null;
  private readonly facility: number;

  constructor(
    readonly name: string,
    readonly config: SyslogParams,
  ) {
    this.facility = SYSLOG_FACILITIES.indexOf(config.facility);
    this.unconfirmedMs = config.transport === 'udp' ? 0 : REPLAY_MS;
  }

  private hostPort(): { host: string; port: number } {
    const a = this.config.address;
    const at = a.lastIndexOf(':');
    const port = Number(a.slice(at + 1));
    if (at <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`syslog address ${a} is not host:port`);
    return { host: a.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
  }

  private connectStream(signal: AbortSignal): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = this.config.transport === 'unix' ? connect({ path: this.config.address }) : connect(this.hostPort());
      const fail = (err: Error): void => {
        signal.removeEventListener('abort', onAbort);
        s.destroy();
        reject(err);
      };
      const onAbort = (): void => fail(new Error(`connecting to ${this.config.address}: aborted`));
      signal.addEventListener('abort', onAbort, { once: true });
      s.once('error', fail);
      s.once('connect', () => {
        signal.removeEventListener('abort', onAbort);
        s.off('error', fail);
        s.setNoDelay(true);
        const broke = (err?: Error): void => {
          if (this.sock === s) {
            this.broken = err ?? new Error(`${this.config.address} closed the connection`);
            this.sock = null;
            this.reviveSoon(1000);
          }
          s.destroy();
        };
        s.on('error', broke);
        s.on('end', () => broke());
        s.on('close', () => broke());
        s.on('data', () => undefined); // a receiver says nothing; read anyway so that nothing piles up
        resolve(s);
      });
    });
  }

  private write(s: Socket, buf: Buffer, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        s.destroy();
        reject(new Error(`writing to ${this.config.address}: timed out`));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      s.write(buf, (err) => {
        signal.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else if (this.sock !== s) reject(this.broken ?? new Error(`${this.config.address} closed the connection`));
        else resolve();
      });
    });
  }

  private keep(buf: Buffer): void {
    const now = Date.now();
    this.replay.push({ buf, atMs: now });
    this.replayBytes += buf.length;
    while (this.replay.length > 1 && (this.replay[0]!.atMs < now - REPLAY_MS || this.replayBytes > REPLAY_BYTES)) {
      this.replayBytes -= this.replay.shift()!.buf.length;
    }
  }

  async deliver(batch: readonly ExportEvent[], signal: AbortSignal): Promise<void> {
    if (this.config.transport === 'udp') return this.deliverUdp(batch);
    const parts: Buffer[] = [];
    for (const e of batch) {
      const msg = Buffer.from(formatRfc5424(e, this.facility, this.config.app_name));
      parts.push(Buffer.from(`${msg.length} `), msg);
    }
    const buf = Buffer.concat(parts);
    const s = await this.connected(signal);
    await this.write(s, buf, signal);
    this.keep(buf);
  }

  /** The connection, made (and, after a broken one, the recent messages written again) if need be. */
  private connected(signal: AbortSignal): Promise<Socket> {
    if (this.sock !== null) return Promise.resolve(this.sock);
    this.connecting ??= (async () => {
      try {
        const s = await this.connectStream(signal);
        this.sock = s;
        if (this.broken !== null && this.replay.length > 0) await this.write(s, Buffer.concat(this.replay.map((r) => r.buf)), signal);
        this.broken = null;
        return s;
      } finally {
        this.connecting = null;
      }
    })();
    return this.connecting;
  }

  /**
   * After a broken connection, the recent messages go again without waiting for the next
   * batch: the last batch of a storm may have been lost with the connection.
   */
  private reviveSoon(ms: number): void {
    if (this.closed || this.reviving !== null) return;
    this.reviving = setTimeout(() => {
      this.reviving = null;
      if (this.closed || this.broken === null || this.replay.length === 0) return;
      this.connected(AbortSignal.timeout(5000)).catch(() => this.reviveSoon(Math.min(ms * 2, 10_000)));
    }, ms);
    this.reviving.unref();
  }

  private async deliverUdp(batch: readonly ExportEvent[]): Promise<void> {
    const { host, port } = this.hostPort();
    if (this.udp === null) {
      const u = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      u.on('error', () => undefined); // send() reports its own errors
      this.udp = u;
    }
    const u = this.udp;
    for (const e of batch) {
      const msg = formatRfc5424(e, this.facility, this.config.app_name);
      await new Promise<void>((resolve, reject) => u.send(msg, port, host, (err) => (err ? reject(err) : resolve())));
    }
  }

  close(): Promise<void> {
    this.closed = true;
    if (this.reviving) clearTimeout(this.reviving);
    this.sock?.end();
    this.sock = null;
    this.udp?.close();
    this.udp = null;
    return Promise.resolve();
  }
}
