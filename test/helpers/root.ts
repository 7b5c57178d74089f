import { existsSync } from 'node:fs';

/** Why host-mode kernel tests cannot run here, or "" when they can. */
export function whyNoKernelAccess(): string {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (tracefs, cgroups and /dev/kmsg are root-only)';
  if (!existsSync('/sys/kernel/tracing') && !existsSync('/sys/kernel/debug/tracing')) return 'no tracefs mount point in this kernel';
  return '';
}
