// How the process probe derives an exit status from the events it saw, in any reading order.
import { describe, expect, it } from 'vitest';
import { exitStatus } from '../../probes/process/index.js';

const code = (exitCode: number) => ({ exitCode, signal: 0, codeKnown: true });
const sig = (signal: number) => ({ exitCode: 0, signal, codeKnown: true });

describe('process probe: exit status', () => {
  it('exit_group() then the SIGKILLs the kernel sends the other threads: a normal exit', () => {
    expect(exitStatus({ code: 0, codeTs: 100, killedTs: 150 })).toEqual(code(0));
    expect(exitStatus({ code: 3, codeTs: 100, killedTs: 150 })).toEqual(code(3));
  });
  it('a SIGTERM queued (blocked, for sigwait) before a clean exit_group(0) does not make it a kill', () => {
    expect(exitStatus({ code: 0, codeTs: 200, generated: 15, generatedTs: 100, killedTs: 250 })).toEqual(code(0));
  });
  it('kill -9 before a thread’s exit_group(): SIGKILL, as the kernel decides', () => {
    expect(exitStatus({ code: 0, codeTs: 200, generated: 9, generatedTs: 100, killedTs: 150 })).toEqual(sig(9));
    expect(exitStatus({ code: 0, codeTs: 100, generated: 9, generatedTs: 200, killedTs: 250 })).toEqual(code(0));
  });
  it('the fast path of a fatal signal shows only SIGKILL deliveries: the queued signal is the cause', () => {
    expect(exitStatus({ generated: 15, generatedTs: 100, killedTs: 150 })).toEqual(sig(15));
    expect(exitStatus({ generated: 9, generatedTs: 100, killedTs: 150 })).toEqual(sig(9));
  });
  it('a fault delivered with the default action, then the core dump’s SIGKILLs', () => {
    expect(exitStatus({ generated: 11, generatedTs: 90, delivered: 11, deliveredTs: 100, killedTs: 150 })).toEqual(sig(11));
    expect(exitStatus({ code: 0, codeTs: 200, delivered: 11, deliveredTs: 100 })).toEqual(sig(11));
    expect(exitStatus({ code: 0, codeTs: 100, delivered: 11, deliveredTs: 200 })).toEqual(code(0));
  });
  it('nothing seen: the status is unknown, not a normal exit', () => {
    expect(exitStatus(undefined)).toEqual({ exitCode: 0, signal: 0, codeKnown: false });
    expect(exitStatus({ since: 5 })).toEqual({ exitCode: 0, signal: 0, codeKnown: false });
    expect(exitStatus({ killedTs: 5 })).toEqual(sig(9));
  });
});
