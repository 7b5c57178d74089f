import { readFileSync } from 'node:fs';

/** Parses a kernel CPU list such as "0-3,8,10-11". */
export function parseCpuList(text: string): number[] {
  const out: number[] = [];
  for (const part of text.trim().split(',')) {
    if (!part) continue;
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || Number.isNaN(a)) continue;
    const last = b === undefined || Number.isNaN(b) ? a : b;
    for (let c = a; c <= last; c++) out.push(c);
  }
  return out;
}

export function onlineCpus(): number[] {
  try {
    return parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8'));
  } catch {
    return [0];
  }
}
