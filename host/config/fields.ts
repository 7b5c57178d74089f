// The kinds of value the config file's keys take, as zod types with the file's own error
// messages: text, paths, one-of, durations and sizes in the file's units, whole numbers, and
// mappings with exactly their keys.
import { z } from 'zod';
import { DURATION_HINT, SIZE_HINT, parseDuration, parseSize } from './units.js';

// eslint-disable-next-line no-control-regex
export const CONTROL = /[\u0000-\u001f\u007f]/;

export function text(what: string) {
  return z
    .string({ error: `must be ${what}` })
    .min(1, { error: `must be ${what}, not empty` })
    .refine((s) => !CONTROL.test(s), { error: 'must not contain control characters' });
}

export function absolutePath(what: string) {
  return z.string({ error: `must be ${what} (an absolute path)` }).refine((s) => s.startsWith('/') && !CONTROL.test(s), {
    error: `must be ${what} (an absolute path, starting with /)`,
  });
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `must be one of ${values.join(', ')}` });
}

export function duration(def: string, minMs = 1) {
  return z
    .string({ error: `must be ${DURATION_HINT}` })
    .transform((s, ctx) => {
      try {
        const ms = parseDuration(s);
        if (ms < minMs) {
          ctx.addIssue({ code: 'custom', message: `must be at least ${minMs} ms, got ${JSON.stringify(s)}` });
          return z.NEVER;
        }
        return ms;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    })
    .prefault(def);
}

export function size(def: string) {
  return z
    .union([z.string(), z.number()], { error: `must be ${SIZE_HINT}` })
    .transform((s, ctx) => {
      try {
        const bytes = parseSize(s);
        if (bytes < 1) {
          ctx.addIssue({ code: 'custom', message: `must be more than 0 bytes, got ${JSON.stringify(s)}` });
          return z.NEVER;
        }
        return bytes;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    })
    .prefault(def);
}

/** A size of at least minBytes, or 0 for "no limit". */
export function sizeOrZero(def: string, minBytes: number, minHint: string) {
  return z
    .union([z.string(), z.number()], { error: `must be ${SIZE_HINT}, or 0 for no limit` })
    .transform((s, ctx) => {
      if (s === 0 || s === '0') return 0;
      try {
        const bytes = parseSize(s);
        if (bytes < minBytes) {
          ctx.addIssue({ code: 'custom', message: `must be at least ${minHint}, or 0 for no limit; got ${JSON.stringify(s)}` });
          return z.NEVER;
        }
        return bytes;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: `${(err as Error).message}, or 0 for no limit` });
        return z.NEVER;
      }
    })
    .prefault(def);
}

export function wholeNumber(what: string, min: number) {
  return z
    .number({ error: `must be ${what}` })
    .int({ error: `must be ${what}` })
    .min(min, { error: `must be ${what}` });
}

/** A mapping with exactly these keys. */
export function mapping<T extends z.core.$ZodLooseShape>(what: string, shape: T) {
  return z.strictObject(shape, { error: `must be ${what} (keys: ${Object.keys(shape).join(', ')})` });
}
