// Fields of a stored payload, read without trusting its shape: a payload is whatever the probe
// or the host plugin sent, so each field is taken only when it has the type expected, and
// otherwise reads as empty (an object with no fields, no number, an empty string).

export type Obj = Record<string, unknown>;

export const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
export const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
export const str = (v: unknown): string => (typeof v === 'string' ? v : '');
