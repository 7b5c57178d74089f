// Signal numbers as Linux numbers them on x86-64 and arm64 (the generic set). The probes
// filter on them in the guest; the host names them in timelines and classifies exits by them.
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

const numbers = (...names: string[]): number[] => names.map((n) => SIGNALS[n]!);

/** Signals whose default action does not end the process (ignore or stop). */
export const NOT_FATAL_BY_DEFAULT = numbers('CHLD', 'CONT', 'STOP', 'TSTP', 'TTIN', 'TTOU', 'URG', 'WINCH');

/** Signals the kernel sends for a fault of the task itself. */
export const FAULT_SIGNALS: ReadonlySet<number> = new Set(numbers('ILL', 'TRAP', 'BUS', 'FPE', 'SEGV', 'SYS'));
/** What administrators and service managers stop processes with. */
export const STOP_SIGNALS: ReadonlySet<number> = new Set(numbers('HUP', 'INT', 'QUIT', 'KILL', 'TERM'));
/** Fatal by default and not usually handled: a fault, an abort, a stop, or a resource limit. */
export const FATAL_SIGNALS: ReadonlySet<number> = new Set([...FAULT_SIGNALS, SIGNALS.ABRT!, ...STOP_SIGNALS, ...numbers('XCPU', 'XFSZ')]);

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
