// The agent's process probe on this machine's own kernel (host mode): a multi-threaded
// program that ends normally must be recorded as a normal exit. When a thread group exits,
// the kernel tears the other threads down with SIGKILL (zap_other_threads) and traces that
// delivery on each of them; it is a consequence of the exit, never its cause. Real programs,
// many runs, since which of the events is read first depends on CPU ordering.
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import type { LocalAgent } from '../../host/channel/local-agent.js';
import { useLocalAgent } from '../helpers/agent-fixture.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { waitFor } from '../helpers/wait.js';

const why = whyNoKernelAccess();
if (why) console.warn(`SKIP host exit status tests: ${why}`);
const cc = spawnSync('cc', ['--version']).status === 0 ? 'cc' : '';

const RUNS = 25;
const PARALLEL = 3;

/** Runs `cmd` RUNS times, PARALLEL at once; returns the pids and exit statuses. */
async function runMany(cmd: string, args: string[]): Promise<Array<{ pid: number; code: number | null; signal: string | null }>> {
  const out: Array<{ pid: number; code: number | null; signal: string | null }> = [];
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < RUNS) {
      next++;
      const child = spawn(cmd, args, { stdio: 'ignore' });
      const [code, signal] = await new Promise<[number | null, string | null]>((res) => child.on('exit', (c, s) => res([c, s])));
      out.push({ pid: child.pid!, code, signal });
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, lane));
  return out;
}

describe.skipIf(Boolean(why))('host mode: normal exits of multi-threaded programs', () => {
  const f = useLocalAgent();
  let agent: LocalAgent;
  let client: AgentClient;
  const records: AgentRecord[] = f.records;

  beforeAll(async () => {
    agent = f.agent;
    client = f.client;
    await client.load(agent.module('process'), { params: { comms: 'node,mtexit' } });
  });

  const exitsOf = async (pids: number[]) => {
    const want = new Set(pids);
    return waitFor(
      `exit records of ${pids.length} runs`,
      () => {
        const got = records.filter((r) => r.kind === 'exit' && want.has(r.raw.exit?.task?.pid ?? -1));
        return got.length >= pids.length ? got : undefined;
      },
      30_000,
    );
  };

  it(`node -e 'setTimeout(()=>process.exit(0),30)', ${RUNS} runs: every exit is exitCode 0 with no signal`, async () => {
    const runs = await runMany(process.execPath, ['-e', 'setTimeout(()=>process.exit(0),30)']);
    expect(runs.every((r) => r.code === 0 && r.signal === null)).toBe(true);
    const exits = await exitsOf(runs.map((r) => r.pid));
    const wrong = exits.filter((r) => r.raw.exit!.signal !== 0 || r.raw.exit!.exitCode !== 0 || !r.raw.exit!.codeKnown);
    expect(wrong.map((r) => r.raw.exit)).toEqual([]);
  }, 120_000);

  // main() returns while its threads spin; or one of the threads calls exit(0) while main()
  // waits, so the group leader dies of the kernel's SIGKILL before the exit_group on another CPU
  // is read.
  const C_SOURCE = `#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static volatile unsigned long n;
static void *spin(void *a) { (void)a; for (;;) n++; return 0; }
static void *quit(void *a) { (void)a; usleep(20000); exit(0); }
int main(int argc, char **argv) {
  pthread_t t;
  for (int i = 0; i < 3; i++) pthread_create(&t, 0, spin, 0);
  if (argc > 1 && strcmp(argv[1], "thread") == 0) {
    pthread_create(&t, 0, quit, 0);
    pause();
  }
  usleep(20000);
  return 0;
}
`;
  for (const how of ['main', 'thread'] as const)
    it.skipIf(!cc)(
      `a C program whose threads are busy when ${how === 'main' ? 'main returns 0' : 'a thread calls exit(0)'}, ${RUNS} runs: every exit is exitCode 0 with no signal${cc ? '' : ' (skipped: no C compiler)'}`,
      async () => {
        const src = join(agent.dir, 'mtexit.c');
        const bin = join(agent.dir, 'mtexit');
        writeFileSync(src, C_SOURCE);
        const built = spawnSync(cc, ['-O1', '-pthread', '-o', bin, src]);
        expect(built.status, built.stderr.toString()).toBe(0);
        const runs = await runMany(bin, how === 'main' ? [] : ['thread']);
        expect(runs.every((r) => r.code === 0 && r.signal === null)).toBe(true);
        const exits = await exitsOf(runs.map((r) => r.pid));
        const wrong = exits.filter((r) => r.raw.exit!.signal !== 0 || r.raw.exit!.exitCode !== 0 || !r.raw.exit!.codeKnown);
        expect(wrong.map((r) => r.raw.exit)).toEqual([]);
      },
      120_000,
    );

  it(`a multi-threaded program killed by SIGKILL is still recorded as killed by SIGKILL`, async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(()=>{},1000)'], { stdio: 'ignore' });
    await waitFor('node started', () => records.some((r) => r.kind === 'exec' && r.raw.exec?.task?.pid === child.pid));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGKILL');
    const [exit] = await exitsOf([child.pid!]);
    expect(exit!.raw.exit).toMatchObject({ signal: 9, exitCode: 0, codeKnown: true });
  });

  it(`a multi-threaded program that ends with SIGTERM (no handler) is recorded with SIGTERM`, async () => {
    const child = spawn(process.execPath, ['-e', 'process.removeAllListeners("SIGTERM");setInterval(()=>{},1000)'], { stdio: 'ignore' });
    await waitFor('node started', () => records.some((r) => r.kind === 'exec' && r.raw.exec?.task?.pid === child.pid));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGTERM');
    const [exit] = await exitsOf([child.pid!]);
    expect(exit!.raw.exit).toMatchObject({ signal: 15, exitCode: 0, codeKnown: true });
  });
});
