// Signal numbers as Linux numbers them on x86-64 and arm64 (the generic set).
export const SIGNALS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ILL: 4,
  TRAP: 5,
  ABRT: 6,
  BUS: 7,
  FPE: 8,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  USR2: 12,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
  STKFLT: 16,
  CHLD: 17,
  CONT: 18,
  STOP: 19,
  TSTP: 20,
  TTIN: 21,
  TTOU: 22,
  URG: 23,
  XCPU: 24,
  XFSZ: 25,
  VTALRM: 26,
  PROF: 27,
  WINCH: 28,
  IO: 29,
  PWR: 30,
  SYS: 31,
};

/** Signals whose default action does not end the process (ignore or stop). */
export const NOT_FATAL_BY_DEFAULT = [17, 18, 19, 20, 21, 22, 23, 28];

export function signalNumber(s: string): number {
  const t = s.trim().toUpperCase().replace(/^SIG/, '');
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    if (n >= 1 && n <= 64) return n;
  }
  const n = SIGNALS[t];
  if (n === undefined) throw new Error(`unknown signal ${JSON.stringify(s)}`);
  return n;
}

/** A tracefs filter clause "field == a || field == b", or "" for an empty list. */
export function anyOf(field: string, values: Array<number | string>): string {
  if (!values.length) return '';
  const parts = values.map((v) => (typeof v === 'number' ? `${field} == ${v}` : `${field} == "${v.replace(/["\\]/g, '')}"`));
  return parts.length === 1 ? parts[0]! : `(${parts.join(' || ')})`;
}

export function allOf(...clauses: string[]): string {
  return clauses.filter(Boolean).join(' && ');
}
