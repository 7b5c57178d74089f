// systemd's own state ("running", "degraded", "stopping" while the guest shuts down or reboots,
// ...), asked by a stopping agent so the host can tell a shutdown's deaths from kills.
//
// Asked of PID 1 itself over its private D-Bus socket (/run/systemd/private: root only, no bus
// daemon, no Hello), one Properties.Get of org.freedesktop.systemd1.Manager.SystemState, rather
// than by starting `systemctl is-system-running` from a unit that systemd is stopping. It is not
// faster where it matters: in a TCG guest going down, PID 1 took 1.0-2.6 s to answer either way
// (the wait is PID 1's), and in the Debian fault tests it often answered only once the agent had
// exited. What it gives is no process started on the way down, and a log that says which step
// failed. Where the private socket cannot be reached (not root, no systemd), systemctl is asked.
import { execFile } from 'node:child_process';
import { createConnection } from 'node:net';

/** PID 1's private D-Bus socket (systemd's, root only). */
export const SYSTEMD_PRIVATE_SOCKET = '/run/systemd/private';

const STATE = /^[a-z-]{1,32}$/;

export interface SystemdState {
  /** systemd's state, or '' where there is no systemd or it did not answer in time */
  state: string;
  /** who answered: PID 1 over its private socket, or systemctl */
  via: 'pid1' | 'systemctl';
  /** why there is no state: PID 1's or systemctl's error */
  error?: string;
}

/** systemd's state, asked within `timeoutMs` (shared by both ways of asking). */
export async function systemdState(timeoutMs: number, socketPath = SYSTEMD_PRIVATE_SOCKET): Promise<SystemdState> {
  const until = Date.now() + timeoutMs;
  const viaBus = await askPid1(socketPath, timeoutMs).catch((err: Error & { code?: string }) => err);
  if (typeof viaBus === 'string') {
    return STATE.test(viaBus) ? { state: viaBus, via: 'pid1' } : { state: '', via: 'pid1', error: `not a state: ${viaBus.slice(0, 40)}` };
  }
  // no socket, or not ours to use: systemctl finds its own way (the system bus)
  if (viaBus.code !== 'ENOENT' && viaBus.code !== 'EACCES' && viaBus.code !== 'ECONNREFUSED') {
    return { state: '', via: 'pid1', error: viaBus.message };
  }
  return askSystemctl(Math.max(0, until - Date.now()), viaBus.message);
}

function askSystemctl(timeoutMs: number, whyNotPid1: string): Promise<SystemdState> {
  if (timeoutMs <= 0) return Promise.resolve({ state: '', via: 'systemctl', error: `no time left (${whyNotPid1})` });
  return new Promise((resolve) => {
    // is-system-running exits non-zero for every state but "running": its output says it all
    execFile('systemctl', ['is-system-running'], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const state = String(stdout ?? '').trim();
      if (STATE.test(state)) return resolve({ state, via: 'systemctl' });
      const why = String(stderr ?? '').trim() || err?.message || `not a state: ${state.slice(0, 40)}`;
      resolve({ state: '', via: 'systemctl', error: `${why.slice(0, 200)} (${whyNotPid1})` });
    });
  });
}

/** One Properties.Get over the private socket; rejects with the socket's error or a D-Bus one. */
export function askPid1(socketPath: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(socketPath);
    let got = Buffer.alloc(0);
    let authed = false;
    let over = false;
    const done = (err: Error | null, state?: string): void => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(state!);
    };
    const timer = setTimeout(() => done(Object.assign(new Error('systemd did not answer'), { code: 'ETIMEDOUT' })), timeoutMs);
    sock.on('error', (err) => done(err));
    sock.on('close', () => done(new Error('systemd closed its socket before answering')));
    sock.on('connect', () => {
      // SASL EXTERNAL: the kernel tells PID 1 our uid; we name it (hex of its decimal digits)
      const uid = Buffer.from(String(process.getuid?.() ?? 0)).toString('hex');
      sock.write(`\0AUTH EXTERNAL ${uid}\r\n`);
    });
    sock.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (!authed) {
        const eol = got.indexOf('\r\n');
        if (eol < 0) return;
        const line = got.subarray(0, eol).toString('latin1');
        got = got.subarray(eol + 2);
        if (!line.startsWith('OK ')) return done(new Error(`systemd refused the D-Bus login: ${line.slice(0, 80)}`));
        authed = true;
        sock.write('BEGIN\r\n');
        sock.write(getSystemStateCall());
      }
      const reply = parseReply(got);
      if (reply === undefined) return; // not all of it yet
      if (reply instanceof Error) return done(reply);
      done(null, reply);
    });
  });
}

// --- the little of D-Bus's wire format one call needs (little-endian, serial 1) ---

const pad = (n: number, to: number): number => (to - (n % to)) % to;

class Writer {
  private parts: Buffer[] = [];
  private len = 0;
  private put(b: Buffer): void {
    this.parts.push(b);
    this.len += b.length;
  }
  align(to: number): this {
    const n = pad(this.len, to);
    if (n) this.put(Buffer.alloc(n));
    return this;
  }
  byte(v: number): this {
    this.put(Buffer.from([v]));
    return this;
  }
  u32(v: number): this {
    this.align(4);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.put(b);
    return this;
  }
  /** a string or an object path: u32 length, bytes, NUL */
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    this.u32(b.length);
    this.put(Buffer.concat([b, Buffer.alloc(1)]));
    return this;
  }
  /** a signature: byte length, bytes, NUL */
  sig(s: string): this {
    this.byte(s.length);
    this.put(Buffer.from(`${s}\0`, 'latin1'));
    return this;
  }
  buffer(): Buffer {
    return Buffer.concat(this.parts, this.len);
  }
}

/** The METHOD_CALL org.freedesktop.DBus.Properties.Get("org.freedesktop.systemd1.Manager", "SystemState"). */
export function getSystemStateCall(): Buffer {
  const body = new Writer().str('org.freedesktop.systemd1.Manager').str('SystemState').buffer();
  const fields = new Writer();
  const field = (code: number, type: string, put: (w: Writer) => void): void => {
    fields.align(8).byte(code).sig(type);
    put(fields);
  };
  field(1, 'o', (w) => w.str('/org/freedesktop/systemd1'));
  field(2, 's', (w) => w.str('org.freedesktop.DBus.Properties'));
  field(3, 's', (w) => w.str('Get'));
  field(6, 's', (w) => w.str('org.freedesktop.systemd1'));
  field(8, 'g', (w) => w.sig('ss'));
  const f = fields.buffer();
  const head = new Writer()
    .byte(0x6c) // 'l': little-endian
    .byte(1) // METHOD_CALL
    .byte(0) // flags
    .byte(1) // protocol version
    .u32(body.length)
    .u32(1) // serial
    .u32(f.length);
  return Buffer.concat([head.buffer(), f, Buffer.alloc(pad(16 + f.length, 8)), body]);
}

const MAX_REPLY = 64 * 1024;

/**
 * The state from a reply to getSystemStateCall(): a string, an Error (a D-Bus ERROR, or a reply
 * that is not what was asked), or undefined while the message is not all there. Signals and
 * other messages before it are skipped.
 */
export function parseReply(buf: Buffer): string | Error | undefined {
  let at = 0;
  for (;;) {
    if (buf.length - at < 16) return undefined;
    const le = buf[at] === 0x6c;
    if (!le && buf[at] !== 0x42) return new Error('not a D-Bus message');
    const u32 = (o: number): number => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
    const type = buf[at + 1]!;
    const bodyLen = u32(at + 4);
    const fieldsLen = u32(at + 12);
    const bodyAt = at + 16 + fieldsLen + pad(16 + fieldsLen, 8);
    if (bodyLen > MAX_REPLY || fieldsLen > MAX_REPLY) return new Error('D-Bus message too long');
    if (buf.length < bodyAt + bodyLen) return undefined;
    if (type === 3) return new Error('systemd answered with a D-Bus error');
    if (type !== 2) {
      at = bodyAt + bodyLen; // not the answer (a signal): the next message
      continue;
    }
    // body "v": signature (byte length, chars, NUL), then the string aligned to 4
    let o = bodyAt;
    const sigLen = buf[o]!;
    const sig = buf.subarray(o + 1, o + 1 + sigLen).toString('latin1');
    if (sig !== 's') return new Error(`SystemState came as a '${sig}', not a string`);
    o += 2 + sigLen;
    o += pad(o - bodyAt, 4);
    const n = u32(o);
    if (o + 4 + n > bodyAt + bodyLen) return new Error('D-Bus string runs past its message');
    return buf.subarray(o + 4, o + 4 + n).toString('utf8');
  }
}
