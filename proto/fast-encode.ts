// An allocation-free protobuf encoder for the agent's hot path (every record it stores).
//
// protobufjs's generated encoders build a list of write operations (an object per field)
// and then a buffer per message: fine on a host, but inside a TCG guest that garbage is
// most of what a record costs. This encoder is compiled once per message type from the
// schema (proto/gen/vesper.json) and writes straight into one reusable buffer. It follows
// protobufjs's rules exactly (fields in id order, a field is written when it is present and
// not null, zeros included), so its bytes are the same; a unit test holds it to that.
import { varintLength, writeVarint } from './frame.js';
import schema from './gen/vesper.json' with { type: 'json' };

interface FieldJson {
  type: string;
  id: number;
  rule?: string;
}
interface TypeJson {
  fields?: Record<string, FieldJson>;
  values?: Record<string, number>;
  nested?: Record<string, TypeJson>;
}

type FieldWriter = (w: ScratchWriter, v: unknown) => void;
interface MessageEncoder {
  fields: Array<{ name: string; write: FieldWriter }>;
}

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;

class ScratchWriter {
  buf: Buffer = Buffer.allocUnsafe(64 * 1024);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  tag(id: number, wire: number): void {
    this.varint32((id << 3) | wire);
  }

  varint32(n: number): void {
    this.ensure(5);
    this.pos = writeVarint(this.buf, this.pos, n >>> 0);
  }

  /** Any integer of up to 64 bits given as a JS number (negative: two's complement, 10 bytes). */
  varint64(n: number): void {
    if (n >= 0 && n < 0x80000000) return this.varint32(n);
    this.ensure(10);
    let lo = n >>> 0;
    let hi = Math.floor(n / 0x100000000) >>> 0;
    const b = this.buf;
    let p = this.pos;
    while (hi) {
      b[p++] = (lo & 127) | 128;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    while (lo > 127) {
      b[p++] = (lo & 127) | 128;
      lo >>>= 7;
    }
    b[p++] = lo;
    this.pos = p;
  }

  string(s: string): void {
    this.ensure(5 + s.length * 3);
    const start = this.pos;
    this.pos += 1; // most strings are short: one length byte, moved over when not
    const n = this.buf.write(s, this.pos, 'utf8');
    this.pos += n;
    this.fixLength(start, n);
  }

  bytes(v: Uint8Array): void {
    this.ensure(5 + v.length);
    this.varint32(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
  }

  double(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  /** The body written after a one-byte length placeholder at `at` is `n` bytes long. */
  fixLength(at: number, n: number): void {
    if (n < 128) {
      this.buf[at] = n;
      return;
    }
    const extra = varintLength(n) - 1;
    this.ensure(extra);
    this.buf.copyWithin(at + 1 + extra, at + 1, this.pos);
    this.pos += extra;
    writeVarint(this.buf, at, n);
  }
}

const root = (schema as { nested: { vesper: { nested: { v1: TypeJson } } } }).nested.vesper.nested.v1;
const encoders = new Map<string, MessageEncoder>();

function lookup(name: string, scope: TypeJson[]): { kind: 'message'; key: string; t: TypeJson } | { kind: 'enum' } {
  for (const s of scope) {
    const t = s.nested?.[name];
    if (t) return t.values ? { kind: 'enum' } : { kind: 'message', key: name, t };
  }
  throw new Error(`fast-encode: unknown type ${name}`);
}

function scalarWriter(type: string, id: number): FieldWriter | null {
  switch (type) {
    case 'uint32':
    case 'int32':
    case 'uint64':
    case 'int64':
      return (w, v) => {
        w.tag(id, VARINT);
        w.varint64(v as number);
      };
    case 'bool':
      return (w, v) => {
        w.tag(id, VARINT);
        w.varint32(v ? 1 : 0);
      };
    case 'double':
      return (w, v) => {
        w.tag(id, FIXED64);
        w.double(v as number);
      };
    case 'string':
      return (w, v) => {
        w.tag(id, LEN);
        w.string(v as string);
      };
    case 'bytes':
      return (w, v) => {
        w.tag(id, LEN);
        w.bytes(v as Uint8Array);
      };
    default:
      return null;
  }
}

function compile(key: string, t: TypeJson, scope: TypeJson[]): MessageEncoder {
  const cached = encoders.get(key);
  if (cached) return cached;
  const enc: MessageEncoder = { fields: [] };
  encoders.set(key, enc);
  const inner = [t, ...scope];
  const entries = Object.entries(t.fields ?? {}).sort((a, b) => a[1].id - b[1].id);
  for (const [name, f] of entries) {
    let one = scalarWriter(f.type, f.id);
    if (!one) {
      const ref = lookup(f.type, inner);
      if (ref.kind === 'enum') one = scalarWriter('int32', f.id)!;
      else {
        const sub = compile(ref.key, ref.t, scope);
        one = (w, v) => {
          w.tag(f.id, LEN);
          w.ensure(1);
          const at = w.pos++;
          writeMessage(w, sub, v as Record<string, unknown>);
          w.fixLength(at, w.pos - at - 1);
        };
      }
    }
    if (f.rule === 'repeated' && !['string', 'bytes'].includes(f.type) && scalarWriter(f.type, f.id))
      throw new Error(`fast-encode: ${key}.${name} is a packed repeated field, which this encoder does not write`);
    const single = one;
    const write: FieldWriter =
      f.rule === 'repeated'
        ? (w, v) => {
            for (const item of v as unknown[]) single(w, item);
          }
        : single;
    enc.fields.push({ name, write });
  }
  return enc;
}

function writeMessage(w: ScratchWriter, enc: MessageEncoder, msg: Record<string, unknown>): void {
  for (const f of enc.fields) {
    const v = msg[f.name];
    if (v !== undefined && v !== null) f.write(w, v);
  }
}

/** Encodes messages of one type; each result is a view valid until the next call. */
export class FastEncoder {
  private readonly w = new ScratchWriter();
  private readonly enc: MessageEncoder;

  constructor(typeName: string) {
    const t = root.nested?.[typeName];
    if (!t?.fields) throw new Error(`fast-encode: no message ${typeName}`);
    this.enc = compile(typeName, t, [root]);
  }

  encode(msg: object): Buffer {
    this.w.pos = 0;
    writeMessage(this.w, this.enc, msg as Record<string, unknown>);
    return this.w.buf.subarray(0, this.w.pos);
  }
}
