/** Shared by the benchmark modules: metrics, the clock, percentiles and rounding. */
export type Metrics = Record<string, number | string>;

export const mono = (): number => Number(process.hrtime.bigint());

/** The p-th percentile (nearest rank) of the values, NaN for none. */
export function pct(values: number[], p: number): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

export function round(n: number, d: number): number {
  const f = 10 ** d;
  return Math.round(n * f) / f;
}
