// Parameters arrive as text; the manifest says what each one is.
import { ErrorCode, VesperError } from '../proto/errors.js';
import type { ManifestParam, ParamValue, ProbeManifest } from './probe-api.js';

export function parseParam(p: ManifestParam, text: string): ParamValue {
  const t = text.trim();
  switch (p.type) {
    case 'int': {
      if (!/^-?\d+$/.test(t)) throw bad(p, text, 'an integer');
      return Number(t);
    }
    case 'bool': {
      if (/^(1|true|yes|on)$/i.test(t)) return true;
      if (/^(0|false|no|off)$/i.test(t)) return false;
      throw bad(p, text, 'true or false');
    }
    case 'list':
      return t === ''
        ? []
        : t
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean);
    case 'duration_ms': {
      const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m)?$/.exec(t);
      if (!m) throw bad(p, text, 'a duration such as 500ms or 2s');
      const n = Number(m[1]);
      return Math.round(m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60000 : n);
    }
    default:
      return text;
  }
}

function bad(p: ManifestParam, text: string, want: string): VesperError {
  return new VesperError(ErrorCode.PROBE_BAD_PARAM, `parameter ${p.name}=${JSON.stringify(text)} is not ${want}`);
}

/** Defaults, then `given` in order; returns both the text form (for the wire) and typed values. */
export function resolveParams(
  manifest: ProbeManifest,
  ...given: Array<ReadonlyArray<{ name?: string | null; value?: string | null }> | null | undefined>
): { text: Record<string, string>; typed: Record<string, ParamValue> } {
  const text: Record<string, string> = {};
  for (const p of manifest.params) text[p.name] = p.default;
  for (const list of given)
    for (const kv of list ?? []) {
      const name = kv.name ?? '';
      if (!manifest.params.some((p) => p.name === name))
        throw new VesperError(
          ErrorCode.PROBE_BAD_PARAM,
          `probe ${manifest.name} has no parameter ${JSON.stringify(name)} (it has: ${manifest.params.map((p) => p.name).join(', ') || 'none'})`,
        );
      text[name] = kv.value ?? '';
    }
  const typed: Record<string, ParamValue> = {};
  for (const p of manifest.params) typed[p.name] = parseParam(p, text[p.name]!);
  return { text, typed };
}
