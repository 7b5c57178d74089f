import { describe, expect, it } from 'vitest';
import { EventFormat } from '../../guest-agent/kernel/event-format.js';

// Verbatim from Linux 6.18 (events/signal/signal_generate/format and
// events/sched/sched_process_exec/format).
const SIGNAL_GENERATE = `name: signal_generate
ID: 261
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:int sig;	offset:8;	size:4;	signed:1;
	field:int errno;	offset:12;	size:4;	signed:1;
	field:int code;	offset:16;	size:4;	signed:1;
	field:char comm[16];	offset:20;	size:16;	signed:0;
	field:pid_t pid;	offset:36;	size:4;	signed:1;
	field:int group;	offset:40;	size:4;	signed:1;
	field:int result;	offset:44;	size:4;	signed:1;

print fmt: "sig=%d errno=%d code=%d comm=%s pid=%d grp=%d res=%d", REC->sig, REC->errno, REC->code, REC->comm, REC->pid, REC->group, REC->result
`;

const SCHED_PROCESS_EXEC = `name: sched_process_exec
ID: 365
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;
	field:pid_t pid;	offset:12;	size:4;	signed:1;
	field:pid_t old_pid;	offset:16;	size:4;	signed:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
`;

// A made-up event for the field kinds the two above lack.
const WIDE = `name: wide_test
ID: 4242
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:unsigned long total_vm;	offset:8;	size:8;	signed:0;
	field:long delta;	offset:16;	size:8;	signed:1;
	field:s8 small;	offset:24;	size:1;	signed:1;
	field:u8 flag;	offset:25;	size:1;	signed:0;
	field:short mid;	offset:26;	size:2;	signed:1;
	field:u8 raw[6];	offset:28;	size:6;	signed:0;
	field:__rel_loc char[] rel;	offset:36;	size:4;	signed:0;

print fmt: "whatever"
`;

function signalRecord(o: { sig: number; errno: number; code: number; comm: Buffer; pid: number; group: number; result: number }): Buffer {
  const b = Buffer.alloc(48, 0xcc);
  b.writeUInt16LE(261, 0);
  b.writeUInt8(0x81, 2);
  b.writeUInt8(2, 3);
  b.writeInt32LE(4321, 4);
  b.writeInt32LE(o.sig, 8);
  b.writeInt32LE(o.errno, 12);
  b.writeInt32LE(o.code, 16);
  b.fill(0, 20, 36);
  o.comm.copy(b, 20, 0, 16);
  b.writeInt32LE(o.pid, 36);
  b.writeInt32LE(o.group, 40);
  b.writeInt32LE(o.result, 44);
  return b;
}

describe('EventFormat.parse', () => {
  it('parses signal_generate: name, ID and every field with offset, size, sign and kind', () => {
    const f = EventFormat.parse(SIGNAL_GENERATE);
    expect(f.id).toBe(261);
    expect(f.name).toBe('signal_generate');
    expect(f.fields.map((x) => [x.name, x.offset, x.size, x.signed, x.kind])).toEqual([
      ['common_type', 0, 2, false, 'int'],
      ['common_flags', 2, 1, false, 'int'],
      ['common_preempt_count', 3, 1, false, 'int'],
      ['common_pid', 4, 4, true, 'int'],
      ['sig', 8, 4, true, 'int'],
      ['errno', 12, 4, true, 'int'],
      ['code', 16, 4, true, 'int'],
      ['comm', 20, 16, false, 'str'],
      ['pid', 36, 4, true, 'int'],
      ['group', 40, 4, true, 'int'],
      ['result', 44, 4, true, 'int'],
    ]);
    expect(f.has('comm')).toBe(true);
    expect(f.has('group')).toBe(true);
    expect(f.has('REC')).toBe(false);
    expect(f.has('sender')).toBe(false);
  });

  it('parses sched_process_exec with a __data_loc string', () => {
    const f = EventFormat.parse(SCHED_PROCESS_EXEC);
    expect(f.id).toBe(365);
    expect(f.name).toBe('sched_process_exec');
    expect(f.fields.slice(4).map((x) => [x.name, x.offset, x.size, x.signed, x.kind])).toEqual([
      ['filename', 8, 4, false, 'data_loc'],
      ['pid', 12, 4, true, 'int'],
      ['old_pid', 16, 4, true, 'int'],
    ]);
  });

  it('classifies 64-bit, array, odd-size and __rel_loc fields', () => {
    const f = EventFormat.parse(WIDE);
    expect(f.fields.slice(4).map((x) => [x.name, x.size, x.signed, x.kind])).toEqual([
      ['total_vm', 8, false, 'int'],
      ['delta', 8, true, 'int'],
      ['small', 1, true, 'int'],
      ['flag', 1, false, 'int'],
      ['mid', 2, true, 'int'],
      ['raw', 6, false, 'bytes'],
      ['rel', 4, false, 'rel_loc'],
    ]);
  });

  it('parses the same text with spaces instead of tabs', () => {
    const f = EventFormat.parse(SIGNAL_GENERATE.replace(/\t/g, ' '));
    expect(f.fields).toHaveLength(11);
    expect(f.fields[7]).toEqual({ name: 'comm', offset: 20, size: 16, signed: false, kind: 'str' });
  });

  it('refuses a format without an ID', () => {
    expect(() => EventFormat.parse(SIGNAL_GENERATE.replace('ID: 261\n', ''))).toThrow(/without an ID: signal_generate/);
  });
});

describe('EventFormat.decode', () => {
  const sigFmt = EventFormat.parse(SIGNAL_GENERATE);
  const execFmt = EventFormat.parse(SCHED_PROCESS_EXEC);

  it('decodes signal_generate with signed negatives and a NUL-terminated comm', () => {
    const comm = Buffer.alloc(16, 0x58); // junk after the NUL must not show
    comm.write('sleep\0', 0, 'latin1');
    const rec = signalRecord({ sig: 9, errno: -22, code: -6, comm, pid: -1, group: 1, result: 2 });
    expect(sigFmt.decode(rec, 0, rec.length)).toEqual({
      common_type: 261,
      common_flags: 0x81,
      common_preempt_count: 2,
      common_pid: 4321,
      sig: 9,
      errno: -22,
      code: -6,
      comm: 'sleep',
      pid: -1,
      group: 1,
      result: 2,
    });
  });

  it('bounds a comm of 16 characters with no NUL at the field size', () => {
    const rec = signalRecord({ sig: 11, errno: 0, code: 1, comm: Buffer.from('abcdefghijklmnop'), pid: 7, group: 0, result: 0 });
    expect(sigFmt.decode(rec, 0, rec.length).comm).toBe('abcdefghijklmnop');
  });

  it('decodes a record that starts in the middle of a buffer', () => {
    const rec = signalRecord({ sig: 6, errno: 0, code: -6, comm: Buffer.from('abort\0'), pid: 100, group: 0, result: 1 });
    const buf = Buffer.concat([Buffer.alloc(13, 0xff), rec, Buffer.alloc(5, 0xff)]);
    const out = sigFmt.decode(buf, 13, rec.length);
    expect(out.sig).toBe(6);
    expect(out.comm).toBe('abort');
    expect(out.result).toBe(1);
    expect(out.common_type).toBe(261);
  });

  it('leaves out fields that lie beyond the record length', () => {
    const rec = signalRecord({ sig: 1, errno: 0, code: 0, comm: Buffer.from('x\0'), pid: 2, group: 3, result: 4 });
    const out = sigFmt.decode(rec, 0, 40);
    expect(out.pid).toBe(2);
    expect('group' in out).toBe(false);
    expect('result' in out).toBe(false);
    expect(Object.keys(out)).toHaveLength(9);
  });

  function execRecord(filename: Buffer, loc?: number): Buffer {
    const b = Buffer.alloc(20 + filename.length);
    b.writeUInt16LE(365, 0);
    b.writeInt32LE(555, 4);
    b.writeUInt32LE(loc ?? ((filename.length << 16) | 20) >>> 0, 8);
    b.writeInt32LE(555, 12);
    b.writeInt32LE(554, 16);
    filename.copy(b, 20);
    return b;
  }

  it('decodes a __data_loc string (offset low 16 bits, length high 16 bits, from the record start)', () => {
    const rec = execRecord(Buffer.from('/usr/bin/true\0', 'latin1'));
    expect(execFmt.decode(rec, 0, rec.length)).toEqual({
      common_type: 365,
      common_flags: 0,
      common_preempt_count: 0,
      common_pid: 555,
      filename: '/usr/bin/true',
      pid: 555,
      old_pid: 554,
    });
    // Also when the record sits at an offset in a larger buffer (the offset is relative to the record).
    const buf = Buffer.concat([Buffer.from('/etc/passwd\0junk'), rec]);
    expect(execFmt.decode(buf, 16, rec.length).filename).toBe('/usr/bin/true');
  });

  it('decodes a UTF-8 file name', () => {
    const rec = execRecord(Buffer.from('/tmp/ünï\0', 'utf8'));
    expect(execFmt.decode(rec, 0, rec.length).filename).toBe('/tmp/ünï');
  });

  it('gives an empty string for a __data_loc pointing outside the record', () => {
    const name = Buffer.from('/bin/sh\0');
    const rec = execRecord(name, ((name.length + 10) << 16) | 20);
    const out = execFmt.decode(rec, 0, rec.length);
    expect(out.filename).toBe('');
    expect(out.pid).toBe(555);
  });

  it('decodes u64 and s64 fields, small signed ints, raw bytes and a __rel_loc string', () => {
    const f = EventFormat.parse(WIDE);
    const b = Buffer.alloc(48, 0);
    b.writeUInt16LE(4242, 0);
    b.writeBigUInt64LE(2n ** 40n + 5n, 8);
    b.writeBigInt64LE(-(2n ** 40n) - 3n, 16);
    b.writeInt8(-128, 24);
    b.writeUInt8(255, 25);
    b.writeInt16LE(-2, 26);
    Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]).copy(b, 28);
    // __rel_loc: offset counted from the end of the field itself (36 + 4 = 40)
    b.writeUInt32LE((5 << 16) | 2, 36);
    b.write('hey\0', 42, 'latin1');
    const out = f.decode(b, 0, 48);
    expect(out.total_vm).toBe(2 ** 40 + 5);
    expect(out.delta).toBe(-(2 ** 40) - 3);
    expect(out.small).toBe(-128);
    expect(out.flag).toBe(255);
    expect(out.mid).toBe(-2);
    expect(out.raw).toBe('deadbeef0001');
    expect(out.rel).toBe('hey');
  });

  it('decodes -1 in a signed 64-bit field and 2^53 - 1 in an unsigned one', () => {
    const f = EventFormat.parse(WIDE);
    const b = Buffer.alloc(40, 0);
    b.writeBigUInt64LE(2n ** 53n - 1n, 8);
    b.writeBigInt64LE(-1n, 16);
    const out = f.decode(b, 0, 40);
    expect(out.total_vm).toBe(Number.MAX_SAFE_INTEGER);
    expect(out.delta).toBe(-1);
  });
});
