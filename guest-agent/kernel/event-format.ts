// Reads a tracefs event's `format` file and decodes raw records of that event.
// The layout comes from the running kernel, never from assumptions: fields move between
// kernel versions (oom/mark_victim gained its memory figures in 6.8; sched_process_exit
// gained group_dead later still), so a probe names the fields it reads (missing() checks them at
// load) and asks before it uses one that only some kernels have.

export type FieldValue = number | string;

interface FieldSpec {
  name: string;
  offset: number;
  size: number;
  signed: boolean;
  kind: 'int' | 'str' | 'data_loc' | 'rel_loc' | 'bytes';
}

export class EventFormat {
  readonly id: number;
  readonly name: string;
  readonly fields: readonly FieldSpec[];
  private readonly byName: Map<string, FieldSpec>;

  constructor(id: number, name: string, fields: FieldSpec[]) {
    this.id = id;
    this.name = name;
    this.fields = fields;
    this.byName = new Map(fields.map((f) => [f.name, f]));
  }

  has(field: string): boolean {
    return this.byName.has(field);
  }

  /** Of `wanted`, the fields this kernel's format lacks (in the order asked). */
  missing(wanted: readonly string[]): string[] {
    return wanted.filter((f) => !this.byName.has(f));
  }

  static parse(text: string): EventFormat {
    const name = /^name:\s*(\S+)/m.exec(text)?.[1] ?? '';
    const idText = /^ID:\s*(\d+)/m.exec(text)?.[1];
    if (!idText) throw new Error(`event format without an ID: ${name || text.slice(0, 40)}`);
    const fields: FieldSpec[] = [];
    const re = /field:([^;]+);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);/g;
    for (let m = re.exec(text); m; m = re.exec(text)) {
      const decl = m[1]!.trim();
      const offset = Number(m[2]);
      const size = Number(m[3]);
      const signed = m[4] === '1';
      const nameMatch = /([A-Za-z_][A-Za-z0-9_]*)\s*(\[[^\]]*\])?\s*$/.exec(decl);
      if (!nameMatch) continue;
      const fname = nameMatch[1]!;
      const isArray = Boolean(nameMatch[2]);
      let kind: FieldSpec['kind'] = 'int';
      if (decl.startsWith('__data_loc')) kind = 'data_loc';
      else if (decl.startsWith('__rel_loc')) kind = 'rel_loc';
      else if (isArray) kind = /\bchar\b/.test(decl) ? 'str' : 'bytes';
      else if (size !== 1 && size !== 2 && size !== 4 && size !== 8) kind = 'bytes';
      fields.push({ name: fname, offset, size, signed, kind });
    }
    return new EventFormat(Number(idText), name, fields);
  }

  /** Decodes one record's payload (starting at common_type) into field values. */
  decode(buf: Buffer, start: number, len: number): Record<string, FieldValue> {
    const out: Record<string, FieldValue> = {};
    for (const f of this.fields) {
      if (f.offset + f.size > len) continue;
      const at = start + f.offset;
      switch (f.kind) {
        case 'int':
          out[f.name] = readInt(buf, at, f.size, f.signed);
          break;
        case 'str':
          out[f.name] = cString(buf, at, at + f.size);
          break;
        case 'data_loc': {
          const loc = buf.readUInt32LE(at);
          const off = loc & 0xffff;
          const l = loc >>> 16;
          out[f.name] = off + l <= len ? cString(buf, start + off, start + off + l) : '';
          break;
        }
        case 'rel_loc': {
          const loc = buf.readUInt32LE(at);
          const off = f.offset + f.size + (loc & 0xffff);
          const l = loc >>> 16;
          out[f.name] = off + l <= len ? cString(buf, start + off, start + off + l) : '';
          break;
        }
        default:
          out[f.name] = buf.subarray(at, at + f.size).toString('hex');
      }
    }
    return out;
  }
}

function readInt(buf: Buffer, at: number, size: number, signed: boolean): number {
  switch (size) {
    case 1:
      return signed ? buf.readInt8(at) : buf.readUInt8(at);
    case 2:
      return signed ? buf.readInt16LE(at) : buf.readUInt16LE(at);
    case 4:
      return signed ? buf.readInt32LE(at) : buf.readUInt32LE(at);
    default: {
      // 64-bit fields (pointers, memory figures, flags) as numbers; exact below 2^53.
      const lo = buf.readUInt32LE(at);
      const hi = signed ? buf.readInt32LE(at + 4) : buf.readUInt32LE(at + 4);
      return hi * 0x100000000 + lo;
    }
  }
}

function cString(buf: Buffer, from: number, to: number): string {
  let end = from;
  while (end < to && buf[end] !== 0) end++;
  return buf.toString('utf8', from, end);
}
