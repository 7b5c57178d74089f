// The stopping agent's question to systemd over PID 1's private D-Bus socket: the call it writes,
// how it reads the answer, and what it says when there is none. A peer on a unix socket plays
// PID 1 here (the Debian reboot tests ask the real one).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { askPid1, getSystemStateCall, parseReply, systemdState } from '../../guest-agent/systemd/system-state.js';

const dir = mkdtempSync(join(tmpdir(), 'vesper-sysstate-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const pad = (len: number, to: number): number => (to - (len % to)) % to;

/** A message as PID 1 would send it: little-endian, no header fields, the given body. */
function message(type: number, body: Buffer, serial = 7): Buffer {
  const head = Buffer.alloc(16);
  head.write('l', 0, 'latin1');
  head[1] = type;
  head[3] = 1;
  head.writeUInt32LE(body.length, 4);
  head.writeUInt32LE(serial, 8);
  head.writeUInt32LE(0, 12);
  return Buffer.concat([head, body]);
}

/** A variant holding a string: signature "s", then the string at the next 4-byte boundary. */
function variantString(s: string): Buffer {
  const sig = Buffer.from([1, 0x73, 0]);
  const str = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(str.length);
  return Buffer.concat([sig, Buffer.alloc(pad(sig.length, 4)), len, str, Buffer.alloc(1)]);
}

/** Reads a D-Bus string (u32 length, bytes, NUL) at `o`; returns it and the offset after it. */
function readStr(b: Buffer, o: number): [string, number] {
  o += pad(o, 4);
  const len = b.readUInt32LE(o);
  return [b.subarray(o + 4, o + 4 + len).toString('utf8'), o + 5 + len];
}

/** A peer on a unix socket that logs a client in and answers its first message with `answer`. */
async function fakePid1(
  answer: (call: Buffer) => Buffer | null,
  authReply = 'OK 0123456789abcdef0123456789abcdef',
): Promise<{ path: string; server: Server; lines: string[] }> {
  const path = join(dir, `private-${++n}`);
  const lines: string[] = [];
  const server = createServer((sock: Socket) => {
    let got = Buffer.alloc(0);
    let begun = false;
    sock.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      while (!begun) {
        const eol = got.indexOf('\r\n');
        if (eol < 0) return;
        const line = got.subarray(0, eol).toString('latin1');
        got = got.subarray(eol + 2);
        lines.push(line);
        if (line.startsWith('\0AUTH')) sock.write(`${authReply}\r\n`);
        if (line === 'BEGIN') begun = true;
      }
      if (got.length < 16) return;
      const whole = 16 + got.readUInt32LE(12) + pad(16 + got.readUInt32LE(12), 8) + got.readUInt32LE(4);
      if (got.length < whole) return;
      const reply = answer(got.subarray(0, whole));
      if (reply) sock.write(reply);
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((res) => server.listen(path, res));
  return { path, server, lines };
}

describe('systemd state over the private D-Bus socket', () => {
  it('writes one Properties.Get of org.freedesktop.systemd1.Manager.SystemState', () => {
    const m = getSystemStateCall();
    expect(m.subarray(0, 4)).toEqual(Buffer.from([0x6c, 1, 0, 1]));
    const bodyLen = m.readUInt32LE(4);
    const fieldsLen = m.readUInt32LE(12);
    const bodyAt = 16 + fieldsLen + pad(16 + fieldsLen, 8);
    expect(m.length).toBe(bodyAt + bodyLen);
    // the header fields, each (code, signature, value) aligned to 8
    const fields: Record<number, string> = {};
    let o = 16;
    while (o < 16 + fieldsLen) {
      o += pad(o, 8);
      const code = m[o]!;
      const sig = m.subarray(o + 2, o + 2 + m[o + 1]!).toString('latin1');
      o += 3 + m[o + 1]!;
      if (sig === 'g') {
        fields[code] = m.subarray(o + 1, o + 1 + m[o]!).toString('latin1');
        o += 2 + m[o]!;
      } else {
        [fields[code], o] = readStr(m, o);
      }
    }
    expect(fields).toEqual({
      1: '/org/freedesktop/systemd1',
      2: 'org.freedesktop.DBus.Properties',
      3: 'Get',
      6: 'org.freedesktop.systemd1',
      8: 'ss',
    });
    const [iface, next] = readStr(m, bodyAt);
    const [prop] = readStr(m, next);
    expect([iface, prop]).toEqual(['org.freedesktop.systemd1.Manager', 'SystemState']);
  });

  it('reads the string from the answer, whole or in pieces, after any signal before it', () => {
    const reply = message(2, variantString('stopping'));
    expect(parseReply(reply)).toBe('stopping');
    for (let cut = 0; cut < reply.length; cut++) expect(parseReply(reply.subarray(0, cut))).toBeUndefined();
    const signal = message(4, Buffer.from([1, 2, 3]));
    expect(parseReply(Buffer.concat([signal, reply]))).toBe('stopping');
  });

  it('calls a D-Bus error, a non-string and garbage errors, never a state', () => {
    expect(parseReply(message(3, Buffer.alloc(0)))).toBeInstanceOf(Error);
    const notString = Buffer.from([1, 0x75, 0, 0, 9, 0, 0, 0]); // a variant holding u32 9
    expect(String(parseReply(message(2, notString)))).toMatch(/'u', not a string/);
    expect(parseReply(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'))).toBeInstanceOf(Error);
    const lying = message(2, variantString('running'));
    lying.writeUInt32LE(1 << 30, 4); // a body length no reply has
    expect(String(parseReply(lying))).toMatch(/too long/);
  });

  it('logs in with EXTERNAL as its uid, then asks; the answer is the state', async () => {
    const pid1 = await fakePid1(() => message(2, variantString('stopping')));
    try {
      expect(await systemdState(2000, pid1.path)).toEqual({ state: 'stopping', via: 'pid1' });
      const uid = Buffer.from(String(process.getuid?.() ?? 0)).toString('hex');
      expect(pid1.lines).toEqual([`\0AUTH EXTERNAL ${uid}`, 'BEGIN']);
    } finally {
      pid1.server.close();
    }
  });

  it("says '' when PID 1 refuses the login, answers with an error, or not at all in time", async () => {
    const refusing = await fakePid1(() => null, 'REJECTED EXTERNAL');
    const erring = await fakePid1(() => message(3, Buffer.alloc(0)));
    const silent = await fakePid1(() => null);
    try {
      await expect(askPid1(refusing.path, 2000)).rejects.toThrow(/refused the D-Bus login: REJECTED/);
      expect(await systemdState(2000, refusing.path)).toMatchObject({ state: '', via: 'pid1', error: expect.stringMatching(/refused/) });
      expect(await systemdState(2000, erring.path)).toMatchObject({ state: '', via: 'pid1', error: expect.stringMatching(/D-Bus error/) });
      const t = Date.now();
      await expect(askPid1(silent.path, 300)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
      expect(await systemdState(300, silent.path)).toMatchObject({ state: '', via: 'pid1', error: 'systemd did not answer' });
      expect(Date.now() - t).toBeLessThan(5000);
    } finally {
      for (const p of [refusing, erring, silent]) p.server.close();
    }
  });

  it('without the private socket, asks systemctl, whose exit status is not the answer (is-system-running exits 1 unless running)', async () => {
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'systemctl'), '#!/bin/sh\n[ "$1" = is-system-running ] && echo degraded; exit 1\n', { mode: 0o755 });
    const path = process.env['PATH'];
    process.env['PATH'] = `${bin}:${path ?? ''}`;
    try {
      expect(await systemdState(3000, join(dir, 'no-such-socket'))).toEqual({ state: 'degraded', via: 'systemctl' });
      writeFileSync(join(bin, 'systemctl'), '#!/bin/sh\necho "Failed to connect to bus: No such file or directory" >&2; exit 1\n');
      expect(await systemdState(3000, join(dir, 'no-such-socket'))).toMatchObject({
        state: '',
        via: 'systemctl',
        error: expect.stringMatching(/^Failed to connect to bus.*\(connect ENOENT/),
      });
    } finally {
      process.env['PATH'] = path;
    }
  });
});
