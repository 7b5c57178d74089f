// The exec record names who ran the program even when the program has already ended and been
// reaped by the time its exec is read (a fault right after exec, an agent that a busy machine
// let fall behind): /proc says nothing then, the fork the probe saw does.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseManifest } from '../../contract/manifest.js';
import { resolveParams } from '../../contract/params.js';
import type { TraceEvent } from '../../contract/probe-api.js';
import { VESPER_VERSION } from '../../proto/version.js';
import processProbe from '../../probes/process/index.js';
import { fakeProbeContext } from '../helpers/probe-context.js';

const SIGCHLD = 17;
const CLONE_PARENT = 0x8000;
const CLONE_THREAD_SET = 0x10000 | 0x100 | 0x800; // CLONE_THREAD | CLONE_VM | CLONE_SIGHAND
const GONE = 4_200_000; // above the kernel's largest pid_max (2^22): no process has it

type Handler = (ev: TraceEvent) => void;
interface Emitted {
  event: string;
  payload: { exec: { task: { pid: number; comm: string }; parent?: { pid: number; comm: string } } };
}

async function processProbeWith(): Promise<{ on: Record<string, Handler>; emitted: Emitted[] }> {
  const manifest = parseManifest(readFileSync(join(import.meta.dirname, '../../probes/process/manifest.json')), VESPER_VERSION);
  const on: Record<string, Handler> = {};
  const emitted: Emitted[] = [];
  const ctx = fakeProbeContext({
    name: 'process',
    params: resolveParams(manifest).typed,
    trace: (system, event, _filter, fn) => void (on[`${system}/${event}`] = fn),
    emit: (event, payload) => (emitted.push({ event, payload } as Emitted), true),
  });
  await processProbe.setup(ctx);
  return { on, emitted };
}

const ev = (pid: number, fields: Record<string, number | string>, ts = 1000): TraceEvent => ({ ts, cpu: 0, pid, fields });
const exec = (pid: number, ts = 2000) => ev(pid, { pid, old_pid: pid, filename: '/usr/sbin/vesper-segv' }, ts);
const myComm = readFileSync(`/proc/${process.pid}/comm`, 'utf8').trimEnd();

describe('process probe: the parent of an exec', () => {
  it('a program gone before its exec is read: its parent from the fork that was seen', async () => {
    const { on, emitted } = await processProbeWith();
    on['task/task_newtask']!(ev(process.pid, { pid: GONE, clone_flags: SIGCHLD }));
    on['sched/sched_process_exec']!(exec(GONE));
    expect(emitted).toHaveLength(1);
    expect(emitted[0]!.payload.exec).toMatchObject({
      task: { pid: GONE, comm: 'vesper-segv' },
      parent: { pid: process.pid, comm: myComm },
    });
  });

  it('a live process: its parent from /proc, whatever fork was seen', async () => {
    const { on, emitted } = await processProbeWith();
    on['task/task_newtask']!(ev(1, { pid: process.pid, clone_flags: SIGCHLD }));
    on['sched/sched_process_exec']!(exec(process.pid));
    expect(emitted[0]!.payload.exec.parent).toEqual({ pid: process.ppid, comm: expect.any(String) });
  });

  it('no fork seen, or one whose parent is not the caller (CLONE_PARENT): no parent rather than a wrong one', async () => {
    const { on, emitted } = await processProbeWith();
    on['sched/sched_process_exec']!(exec(GONE));
    on['task/task_newtask']!(ev(process.pid, { pid: GONE, clone_flags: SIGCHLD }));
    on['task/task_newtask']!(ev(process.pid, { pid: GONE, clone_flags: SIGCHLD | CLONE_PARENT }));
    on['sched/sched_process_exec']!(exec(GONE, 3000));
    expect(emitted.map((e) => e.payload.exec.parent)).toEqual([undefined, undefined]);
  });

  it('a fork by a thread names the process the thread belongs to; a new thread is no fork', async () => {
    const { on, emitted } = await processProbeWith();
    const thread = GONE + 1;
    on['task/task_newtask']!(ev(process.pid, { pid: thread, clone_flags: CLONE_THREAD_SET }));
    on['task/task_newtask']!(ev(thread, { pid: GONE, clone_flags: SIGCHLD }));
    on['sched/sched_process_exec']!(exec(GONE));
    on['sched/sched_process_exec']!(exec(thread));
    expect(emitted.map((e) => e.payload.exec.parent?.pid)).toEqual([process.pid, undefined]);
  });

  it('the newest fork of a reused pid wins, and thousands of forks later an old one is dropped', async () => {
    const { on, emitted } = await processProbeWith();
    on['task/task_newtask']!(ev(1, { pid: GONE, clone_flags: SIGCHLD }));
    on['task/task_newtask']!(ev(process.pid, { pid: GONE, clone_flags: SIGCHLD }));
    on['sched/sched_process_exec']!(exec(GONE));
    for (let i = 0; i < 10_000; i++) on['task/task_newtask']!(ev(process.pid, { pid: 5_000_000 + i, clone_flags: SIGCHLD }));
    on['sched/sched_process_exec']!(exec(GONE, 3000));
    expect(emitted.map((e) => e.payload.exec.parent?.pid)).toEqual([process.pid, undefined]);
  });
});
