/**
 * The numbers in a fault helper's answer ("ok segv 123", "ok sigstorm 9998.3 185"): positive
 * integers only (pids, counts); `withFractions` keeps timings such as the storm's ms as well.
 */
export function numbersIn(line: string, withFractions = false): number[] {
  return line
    .split(/\s+/)
    .map(Number)
    .filter((n) => (withFractions ? Number.isFinite(n) : Number.isInteger(n)) && n > 0);
}
