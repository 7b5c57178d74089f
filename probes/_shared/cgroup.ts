// A task's cgroup as /proc/<pid>/cgroup tells it, for the probes that say which systemd unit a
// process belongs to. On cgroup v2 the line is "0::/system.slice/x.service"; on v1 the
// name=systemd hierarchy holds the unit's path. Kernels 6.1 and 6.12 write the same format.
import { readFileSync } from 'node:fs';

const PATH_MAX = 4096;

/** The cgroup path from the text of a /proc/<pid>/cgroup file ("" when it names none). */
export function cgroupFromProcText(text: string): string {
  const lines = text.split('\n');
  const line = lines.find((l) => l.startsWith('0::')) ?? lines.find((l) => l.includes(':name=systemd:'));
  if (!line) return '';
  // "hierarchy-id:controllers:path": the path may itself hold ':' (a unit escaped oddly).
  const path = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
  return path.slice(0, PATH_MAX);
}

/** A live task's cgroup path, "" when it is gone or /proc says nothing. */
export function cgroupOfPid(pid: number): string {
  try {
    return cgroupFromProcText(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  } catch {
    return '';
  }
}
