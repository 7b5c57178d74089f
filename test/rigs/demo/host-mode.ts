// The main job in host mode: start a vesper agent on this machine's own kernel, attach the
// signal, process and oom probes from the host side, cause real failures, and show what
// the host was told and how fast. (The VM rig replaces "this machine" with a real guest.)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Table from 'cli-table3';
import type { AgentRecord } from '../../../proto/record.js';
import { LocalAgent } from '../../../host/channel/local-agent.js';
import { describeRecord } from './describe.js';
import { exitProgram, segfaultProgram, writeProgram } from './tiny-elf.js';

const log = (msg: string): void => void process.stderr.write(`vesper demo: ${msg}\n`);

/** Runs a command without blocking the event loop (records keep arriving meanwhile). */
function run(cmd: string, args: string[] = []): Promise<void> {
  return new Promise((resolve) => spawn(cmd, args, { stdio: 'ignore' }).once('exit', () => resolve()));
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    log('needs root: tracefs, cgroups and /dev/kmsg are root-only');
    process.exitCode = 77;
    return;
  }
  const agent = new LocalAgent();
  const records: AgentRecord[] = [];
  const seenAt = new Map<number, number>();
  let cg = '';
  try {
    log('starting the agent on this machine (host mode)');
    await agent.start();
    const client = await agent.connect();
    const h = client.hello;
    log(
      `connected: kernel ${h.kernelRelease}, ${h.cpus} CPUs, tracefs ${h.capabilities?.tracefs ? 'yes' : 'no'}, kprobes ${h.capabilities?.kprobeEvents ? 'yes' : 'no'}, PSI ${h.capabilities?.psi ? 'yes' : 'no'}`,
    );
    for (const m of h.capabilities?.missing ?? []) log(`  not available: ${m}`);
    client.on('record', (r) => {
      seenAt.set(r.seq, Number(process.hrtime.bigint()));
      records.push(r);
    });
    await client.load(agent.module('signal'));
    await client.load(agent.module('process'), { params: { comms: 'crashy,exit3,sleep,tail' } });
    await client.load(agent.module('oom'));
    log('attached probes: signal, process, oom (signed with a fresh host key)');

    log('fault 1: a program that dereferences NULL');
    await run(writeProgram(join(agent.dir, 'crashy'), segfaultProgram()));
    log('fault 2: an administrator stops a service with SIGTERM');
    await run('sh', ['-c', 'sleep 60 & t=$!; sleep 0.2; kill -TERM $t; wait $t; true']);
    log('fault 3: a program exits with status 3');
    await run(writeProgram(join(agent.dir, 'exit3'), exitProgram(3)));
    log('fault 4: a memory hog in a 48 MiB cgroup meets the OOM killer');
    const v2 =
      existsSync('/sys/fs/cgroup/cgroup.controllers') && readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8').includes('memory');
    cg = v2 ? `/sys/fs/cgroup/vesper-demo-${process.pid}` : `/sys/fs/cgroup/memory/vesper-demo-${process.pid}`;
    mkdirSync(cg);
    writeFileSync(join(cg, v2 ? 'memory.max' : 'memory.limit_in_bytes'), String(48 << 20));
    const hog = spawn('sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec tail /dev/zero`], { stdio: 'ignore' });
    await new Promise((r) => hog.once('exit', r));
    await new Promise((r) => setTimeout(r, 300));

    const t = new Table({ head: ['seq', 'probe', 'event', 'what happened', 'kernel → host (ms)'] });
    for (const r of records) t.push([r.seq, r.probe, r.event, describeRecord(r), ((seenAt.get(r.seq)! - r.monoNs) / 1e6).toFixed(2)]);
    console.log(t.toString());
    client.close();
  } finally {
    await agent.stop();
    if (cg)
      for (let i = 0; i < 20; i++) {
        try {
          rmdirSync(cg);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
  }
  log(`done: ${records.length} records`);
}

await main();
