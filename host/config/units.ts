// Durations and sizes as people write them in the config: `500ms`, `10s`, `5m`, `2h`, `30d`
// (and sums like `1h30m`); `512KiB`, `64MiB`, `1GiB`, `1GB`, or a plain number of bytes.

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;

export const DURATION_HINT = 'a duration like 500ms, 10s, 5m, 2h, 30d or 1h30m';
export const SIZE_HINT = 'a size like 512KiB, 64MiB, 1GiB, 1GB, or a number of bytes';

/** Milliseconds in a duration; throws a RangeError saying what is allowed. */
export function parseDuration(text: string): number {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) throw new RangeError(`${JSON.stringify(text)} has no unit: write ${DURATION_HINT}`);
  let ms = 0;
  let at = 0;
  DURATION_PART.lastIndex = 0;
  while (at < s.length) {
    DURATION_PART.lastIndex = at;
    const m = DURATION_PART.exec(s);
    if (!m) throw new RangeError(`${JSON.stringify(text)} is not ${DURATION_HINT}`);
    ms += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    at = DURATION_PART.lastIndex;
  }
  if (at === 0) throw new RangeError(`${JSON.stringify(text)} is not ${DURATION_HINT}`);
  if (!Number.isSafeInteger(Math.round(ms))) throw new RangeError(`${JSON.stringify(text)} is too long a duration`);
  return Math.round(ms);
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

/** Bytes in a size; throws a RangeError saying what is allowed. Units ignore case ('gb' is GB). */
export function parseSize(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw new RangeError(`${text} is not a whole number of bytes`);
    return text;
  }
  const m = /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(text.trim());
  const unit = m?.[2] === '' ? 'b' : m?.[2]?.toLowerCase();
  const factor = unit === undefined ? undefined : SIZE_UNITS[unit];
  if (!m || factor === undefined) throw new RangeError(`${JSON.stringify(text)} is not ${SIZE_HINT}`);
  const bytes = Math.round(Number(m[1]) * factor);
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`${JSON.stringify(text)} is too large a size`);
  return bytes;
}
