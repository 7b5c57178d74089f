// A memory-limited cgroup for tests: cgroup v2 where the memory controller is there, the
// v1 memory hierarchy otherwise (this CI host mounts memory as v1). Removed in cleanup.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface MemoryCgroup {
  version: 1 | 2;
  path: string;
  /** the cgroup's path as the kernel prints it (oom_memcg=...) */
  name: string;
  /** Runs `sh -c script` inside the cgroup. */
  run(script: string): ChildProcess;
  remove(): Promise<void>;
}

function v2Root(): string | null {
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    const ctl = join(root, 'cgroup.controllers');
    if (existsSync(ctl) && readFileSync(ctl, 'utf8').split(/\s+/).includes('memory')) return root;
  }
  return null;
}

export function memoryCgroupWhyNot(): string {
  if (v2Root() || existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) return '';
  return 'no memory cgroup controller (neither cgroup v2 memory nor a v1 memory hierarchy)';
}

export function createMemoryCgroup(limitBytes: number): MemoryCgroup {
  const name = `/vesper-test-${process.pid}-${Date.now() % 100000}`;
  const v2 = v2Root();
  let path: string;
  let version: 1 | 2;
  if (v2) {
    version = 2;
    try {
      writeFileSync(join(v2, 'cgroup.subtree_control'), '+memory');
    } catch {
      /* already on, or not allowed: mkdir below will tell */
    }
    path = join(v2, name);
    mkdirSync(path);
    writeFileSync(join(path, 'memory.max'), String(limitBytes));
    if (existsSync(join(path, 'memory.swap.max'))) writeFileSync(join(path, 'memory.swap.max'), '0');
  } else {
    version = 1;
    path = join('/sys/fs/cgroup/memory', name);
    mkdirSync(path);
    writeFileSync(join(path, 'memory.limit_in_bytes'), String(limitBytes));
  }
  const procs = join(path, 'cgroup.procs');
  const children: ChildProcess[] = [];
  return {
    version,
    path,
    name,
    run(script: string) {
      const c = spawn('sh', ['-c', `echo $$ > ${procs} && ${script}`], { stdio: 'ignore' });
      children.push(c);
      return c;
    },
    async remove() {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(path);
          return;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      rmdirSync(path);
    },
  };
}
