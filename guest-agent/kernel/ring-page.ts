// Walks one page read from per_cpu/cpuN/trace_pipe_raw: the kernel ring buffer's own
// layout (kernel/trace/ring_buffer.c). A page is
//   u64 timestamp | local_t commit (data length; bit 31: events were missed before this
//   page, bit 30: their count is stored after the data) | data ...
// and each entry starts with a u32 header: type_len (5 bits) | time_delta (27 bits).

const TYPE_PADDING = 29;
const TYPE_TIME_EXTEND = 30;
const TYPE_TIME_STAMP = 31;
const MISSED_EVENTS = 0x80000000;
const MISSED_STORED = 0x40000000;
const PAGE_HEADER = 16; // u64 timestamp + 64-bit local_t commit

export interface PageVisitor {
  /** One data record: payload at [start, start+len), kernel time in ns (trace clock). */
  event(buf: Buffer, start: number, len: number, ts: number): void;
  /** The kernel overwrote `count` events before this page was read (0 when it did not count them). */
  missed(count: number, ts: number): void;
}

/** Returns the number of data records visited. */
export function walkPage(buf: Buffer, size: number, v: PageVisitor): number {
  if (size < PAGE_HEADER) return 0;
  let ts = buf.readUInt32LE(4) * 0x100000000 + buf.readUInt32LE(0);
  const commitRaw = buf.readUInt32LE(8);
  const dataLen = commitRaw & ~(MISSED_EVENTS | MISSED_STORED);
  const end = Math.min(PAGE_HEADER + dataLen, size);
  if (commitRaw & MISSED_EVENTS) {
    let count = 0;
    if (commitRaw & MISSED_STORED && end + 8 <= size) count = buf.readUInt32LE(end) + buf.readUInt32LE(end + 4) * 0x100000000;
    v.missed(count, ts);
  }
  let pos = PAGE_HEADER;
  let n = 0;
  while (pos + 4 <= end) {
    const hdr = buf.readUInt32LE(pos);
    const typeLen = hdr & 0x1f;
    const delta = hdr >>> 5;
    if (typeLen === TYPE_PADDING) {
      if (delta === 0) break; // the rest of the page is padding
      if (pos + 8 > end) break;
      // A discarded event: its delta is only a marker (the kernel sets 1), not time.
      pos += 4 + buf.readUInt32LE(pos + 4);
      continue;
    }
    if (typeLen === TYPE_TIME_EXTEND) {
      if (pos + 8 > end) break;
      ts += delta + buf.readUInt32LE(pos + 4) * 2 ** 27;
      pos += 8;
      continue;
    }
    if (typeLen === TYPE_TIME_STAMP) {
      if (pos + 8 > end) break;
      // An absolute stamp carries the low 59 bits; keep the upper bits we already had.
      const low = delta + buf.readUInt32LE(pos + 4) * 2 ** 27;
      const top = Math.floor(ts / 2 ** 59) * 2 ** 59;
      ts = top + low;
      pos += 8;
      continue;
    }
    ts += delta;
    let start: number;
    let len: number;
    if (typeLen === 0) {
      if (pos + 8 > end) break;
      len = buf.readUInt32LE(pos + 4) - 4;
      start = pos + 8;
    } else {
      len = typeLen * 4;
      start = pos + 4;
    }
    if (len < 0 || start + len > end) break;
    v.event(buf, start, len, ts);
    n++;
    pos = start + len;
  }
  return n;
}
