// ActionRunner with real exec'd scripts, a real fence lock on a temp dir and a small in-memory
// hypervisor: parsing, per-VM serialisation, coalescing, the rate limit, and that every outcome
// reaches onResult while run() itself never throws. Also the limiter and the action parser alone.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FenceLock } from '../../host/actions/fence-lock.js';
import type { ActionLog } from '../../host/actions/log.js';
import { parseAction } from '../../host/actions/parse.js';
import { ActionRateLimiter } from '../../host/actions/rate-limit.js';
import { ActionRunner, type ActionResult, type ActionRunnerOptions } from '../../host/actions/runner.js';
import type { Hypervisor } from '../../host/libvirt/hypervisor.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { crashedEvent } from '../helpers/action-event.js';
import { sleep, waitFor } from '../helpers/wait.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-runner-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

let nextId = 1;
function event(vm: string, over: Partial<VesperEvent> = {}): VesperEvent {
  return crashedEvent(vm, { id: nextId++, ...over });
}

function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

/** Just enough hypervisor for restart and failover; calls go into `calls`. */
function fakeHv(label: string, calls: string[], domains: Map<string, string>, destroyDelayMs = 0): Hypervisor {
  const note = (c: string): void => void calls.push(`${label}.${c}`);
  const nope = async (): Promise<never> => {
    throw new VesperError(ErrorCode.LIBVIRT_CALL, 'not in this fake');
  };
  return {
    listDomains: nope,
    define: async (xml) => {
      note('define');
      const name = /<name>([^<]*)<\/name>/.exec(xml)![1]!;
      domains.set(name, 'shut off');
      return name;
    },
    start: async (name) => {
      note(`start ${name}`);
      domains.set(name, 'running');
    },
    createPaused: nope,
    resume: nope,
    destroy: async (name) => {
      note(`destroy ${name}`);
      await sleep(destroyDelayMs);
      if (domains.get(name) !== 'running') throw new VesperError(ErrorCode.LIBVIRT_CALL, 'domain is not running');
      domains.set(name, 'shut off');
    },
    shutdown: nope,
    undefine: nope,
    reboot: nope,
    state: async (name) => {
      note(`state ${name}`);
      return { state: domains.get(name) ?? 'no state', reason: '' };
    },
    xml: async (name) => {
      note(`xml ${name}`);
      return `<domain type='kvm'>\n  <name>${name}</name>\n  <uuid>u-1</uuid>\n</domain>\n`;
    },
    attachDevice: nope,
    detachDevice: nope,
    close: async () => undefined,
  };
}

interface Harness {
  runner: ActionRunner;
  results: Array<{ ev: VesperEvent; r: ActionResult }>;
  calls: string[];
  uris: Array<string | undefined>;
  logs: string[];
}

function harness(over: Partial<ActionRunnerOptions> = {}, hv: { destroyDelayMs?: number } = {}): Harness {
  const results: Harness['results'] = [];
  const calls: string[] = [];
  const uris: Array<string | undefined> = [];
  const logs: string[] = [];
  const primaryDomains = new Map([
    ['db1', 'running'],
    ['web', 'running'],
  ]);
  const standbyDomains = new Map<string, string>();
  const primary = fakeHv('primary', calls, primaryDomains, hv.destroyDelayMs ?? 0);
  const standby = fakeHv('standby', calls, standbyDomains);
  const rec = (level: string) => (o: object, msg?: string) => void logs.push(`${level} ${msg ?? ''} ${JSON.stringify(o)}`);
  const log: ActionLog = { debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
  const runner = new ActionRunner({
    hypervisorFor: async (uri) => {
      uris.push(uri);
      return uri === undefined ? primary : standby;
    },
    lock: new FenceLock(join(dir, 'fence')),
    limiter: new ActionRateLimiter({ max: 10, windowMs: 60_000 }),
    execTimeoutMs: 10_000,
    onResult: (ev, r) => void results.push({ ev, r }),
    log,
    owner: 'test-manager',
    confirmTimeoutMs: 2000,
    // these fakes have no disks and no lock manager: the guard is tested in actions-failover
    requireLockManager: false,
    ...over,
  });
  return { runner, results, calls, uris, logs };
}

describe('ActionRunner', () => {
  it('runs exec with the event, and reports the outcome', async () => {
    const out = join(dir, 'seen');
    const cmd = script('hook.sh', `echo "$VESPER_VM $VESPER_EVENT $1" > '${out}'\necho hello`);
    const h = harness();
    const ev = event('web');
    h.runner.run(ev, 'exec', [cmd, 'arg1']);
    await h.runner.idle();
    expect(readFileSync(out, 'utf8')).toBe('web crashed arg1\n');
    expect(h.results).toHaveLength(1);
    expect(h.results[0]!.ev).toBe(ev);
    expect(h.results[0]!.r).toMatchObject({
      action: 'exec',
      ok: true,
      detail: { command: cmd, args: [cmd, 'arg1'], exitCode: 0, output: 'hello\n' },
    });
  });

  it('a failing or missing program is a failed result, not an exception', async () => {
    const h = harness();
    h.runner.run(event('web'), 'exec', [script('fail.sh', 'exit 4')]);
    h.runner.run(event('web'), 'exec', [join(dir, 'missing.sh')]);
    await h.runner.idle();
    expect(h.results.map((x) => x.r.ok)).toEqual([false, false]);
    expect(h.results[0]!.r.error).toEqual({ code: ErrorCode.ACTION_FAILED, message: expect.stringContaining('exited with status 4') });
    expect(h.results[1]!.r.error?.message).toContain(join(dir, 'missing.sh'));
  });

  it('unknown actions and bad arguments are error results at once', () => {
    const h = harness();
    h.runner.run(event('web'), 'reboot-the-world', []);
    h.runner.run(event('web'), 'restart', ['now']);
    h.runner.run(event('web'), 'exec', []);
    h.runner.run(event('web'), 'failover', ['--standby-uri']);
    h.runner.run(event('web'), 'failover', ['--standby-url', 'qemu:///system']);
    h.runner.run(event('web'), 'failover', []); // no standby here and none configured
    h.runner.run(event(''), 'restart', []); // the host's own event has no domain
    expect(h.results.map((x) => [x.r.action, x.r.ok, x.r.error?.code])).toEqual([
      ['reboot-the-world', false, ErrorCode.ACTION_FAILED],
      ['restart', false, ErrorCode.ACTION_FAILED],
      ['exec', false, ErrorCode.ACTION_FAILED],
      ['failover', false, ErrorCode.ACTION_FAILED],
      ['failover', false, ErrorCode.ACTION_FAILED],
      ['failover', false, ErrorCode.ACTION_FAILED],
      ['restart', false, ErrorCode.ACTION_FAILED],
    ]);
    expect(h.results[0]!.r.error!.message).toContain('unknown action');
    expect(h.results[5]!.r.error!.message).toContain('--standby-uri');
    expect(h.calls).toEqual([]);
  });

  it('one action at a time per VM, in order; different VMs in parallel', async () => {
    const log = join(dir, 'log');
    const cmd = script('slow.sh', `echo "start $VESPER_VM $1" >> '${log}'\nsleep 0.3\necho "end $VESPER_VM $1" >> '${log}'`);
    const h = harness();
    h.runner.run(event('a'), 'exec', [cmd, '1']);
    h.runner.run(event('a'), 'exec', [cmd, '2']);
    h.runner.run(event('b'), 'exec', [cmd, '3']);
    expect(h.runner.pending('a')).toBe(2);
    await h.runner.idle();
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    const a = lines.filter((l) => l.includes(' a '));
    expect(a).toEqual(['start a 1', 'end a 1', 'start a 2', 'end a 2']);
    // b started while a's first was still running
    expect(lines.indexOf('start b 3')).toBeLessThan(lines.indexOf('end a 1'));
    expect(h.results.map((x) => x.r.ok)).toEqual([true, true, true]);
    expect(h.runner.pending('a')).toBe(0);
  });

  it('restarts arriving while one runs (or waits) are coalesced into it; they do not count against the limit', async () => {
    const limiter = new ActionRateLimiter({ max: 2, windowMs: 60_000 });
    const h = harness({ limiter }, { destroyDelayMs: 100 });
    h.runner.run(event('db1'), 'restart', []);
    h.runner.run(event('db1'), 'restart', []);
    h.runner.run(event('db1'), 'restart', []);
    await h.runner.idle();
    expect(h.calls).toEqual(['primary.destroy db1', 'primary.start db1']);
    expect(h.results.map((x) => x.r.detail.coalesced ?? false)).toEqual([true, true, false]);
    expect(h.results.every((x) => x.r.ok)).toBe(true);
    expect(limiter.refused()).toBe(0);
    // a restart after it finished is a new one
    h.runner.run(event('db1'), 'restart', []);
    await h.runner.idle();
    expect(h.calls.filter((c) => c.startsWith('primary.start'))).toHaveLength(2);
  });

  it('applies the rate limit per VM: refusals are VSP_ACTION_RATE_LIMITED results', async () => {
    const cmd = script('ok.sh', 'exit 0');
    const limiter = new ActionRateLimiter({ max: 2, windowMs: 60_000 });
    const h = harness({ limiter });
    for (let i = 0; i < 4; i++) h.runner.run(event('a'), 'exec', [cmd]);
    h.runner.run(event('b'), 'exec', [cmd]);
    await h.runner.idle();
    const forA = h.results.filter((x) => x.ev.vm === 'a').map((x) => x.r);
    expect(forA.filter((r) => r.ok)).toHaveLength(2);
    const refused = forA.filter((r) => !r.ok);
    expect(refused).toHaveLength(2);
    for (const r of refused) {
      expect(r.error!.code).toBe(ErrorCode.ACTION_RATE_LIMITED);
      expect(r.detail).toMatchObject({ max: 2, windowMs: 60_000 });
    }
    expect(h.results.find((x) => x.ev.vm === 'b')!.r.ok).toBe(true);
    expect(limiter.refused('a')).toBe(2);
    expect(limiter.refused('b')).toBe(0);
  });

  it('failover: the standby URI from the action (or the default), steps in the result', async () => {
    const h = harness({ standbyUri: 'qemu+ssh://default/system' });
    h.runner.run(event('db1'), 'failover', ['--standby-uri=qemu+ssh://b/system', '--standby-name', 'db1-b']);
    await h.runner.idle();
    const r = h.results[0]!.r;
    expect(r.ok).toBe(true);
    expect(r.detail).toMatchObject({ standbyUri: 'qemu+ssh://b/system', standbyName: 'db1-b', destroyed: true });
    expect((r.detail.steps as Array<{ step: string }>).map((s) => s.step)).toEqual(['locked', 'fenced', 'confirmed', 'defined', 'started']);
    // the standby is connected first: an unreachable standby must stop us before the fence
    expect(h.uris).toEqual(['qemu+ssh://b/system', undefined]);
    expect(h.calls.indexOf('primary.destroy db1')).toBeLessThan(h.calls.indexOf('standby.start db1-b'));

    h.runner.run(event('web'), 'failover', []);
    await h.runner.idle();
    expect(h.results[1]!.r).toMatchObject({ ok: true, detail: { standbyUri: 'qemu+ssh://default/system', standbyName: 'web' } });
  });

  it('failover with an unreachable standby fences nothing; with an unreachable primary, starts nothing', async () => {
    const calls: string[] = [];
    const h = harness({
      standbyUri: 'qemu+ssh://b/system',
      hypervisorFor: async (uri) => {
        calls.push(`connect ${uri ?? 'primary'}`);
        throw new VesperError(ErrorCode.LIBVIRT_UNAVAILABLE, 'Failed to connect socket');
      },
    });
    h.runner.run(event('db1'), 'failover', []);
    await h.runner.idle();
    expect(h.results[0]!.r).toMatchObject({ ok: false, error: { code: ErrorCode.ACTION_FAILED } });
    expect(h.results[0]!.r.error!.message).toContain('nothing fenced');
    expect(calls).toEqual(['connect qemu+ssh://b/system']);

    const h2 = harness({
      standbyUri: 'qemu+ssh://b/system',
      hypervisorFor: async (uri) => {
        if (uri === undefined) throw new VesperError(ErrorCode.LIBVIRT_UNAVAILABLE, 'Failed to connect socket');
        return fakeHv('standby', h2.calls, new Map());
      },
    });
    h2.runner.run(event('db1'), 'failover', []);
    await h2.runner.idle();
    expect(h2.results[0]!.r).toMatchObject({ ok: false, error: { code: ErrorCode.PRIMARY_UNREACHABLE } });
    expect(h2.results[0]!.r.error!.message).toMatch(/Pacemaker/);
    expect(h2.calls).toEqual([]);
  });

  it('failover requires the lock manager unless told otherwise: a diskless VM is refused, nothing fenced', async () => {
    const h = harness({ standbyUri: 'qemu+ssh://b/system', requireLockManager: undefined });
    h.runner.run(event('db1'), 'failover', []);
    await h.runner.idle();
    expect(h.results[0]!.r).toMatchObject({
      ok: false,
      error: { code: ErrorCode.FAILOVER_UNGUARDED },
      detail: { steps: [{ step: 'locked' }] },
    });
    expect(h.calls.some((c) => c.includes('destroy'))).toBe(false);
  });

  it('a failed failover reports how far it got', async () => {
    const h = harness({ standbyUri: 'qemu+ssh://b/system' });
    await new FenceLock(join(dir, 'fence')).tryAcquire('db1', 'someone-else', 60_000);
    h.runner.run(event('db1'), 'failover', []);
    await h.runner.idle();
    expect(h.results[0]!.r).toMatchObject({ ok: false, error: { code: ErrorCode.FENCE_LOCKED }, detail: { steps: [] } });
    expect(h.results[0]!.r.error!.message).toContain('someone-else');
    expect(h.calls).toEqual([]);
  });

  it('never throws into the caller, even when onResult throws or the hypervisor factory fails', async () => {
    const h = harness({
      onResult: () => {
        throw new Error('subscriber bug');
      },
      hypervisorFor: () => Promise.reject(new Error('no libvirt here')),
    });
    expect(() => h.runner.run(event('db1'), 'restart', [])).not.toThrow();
    expect(() => h.runner.run(event('db1'), 'nonsense', [])).not.toThrow();
    expect(() => h.runner.run(null as unknown as VesperEvent, 'restart', [])).not.toThrow();
    await h.runner.idle();
    await waitFor(
      'the handler error to be logged twice',
      () => h.logs.filter((l) => l.includes('result handler threw')).length === 2,
      2000,
    );
    expect(h.logs.some((l) => l.startsWith('warn') && l.includes('no libvirt here'))).toBe(true);
  });

  it('bounds a restart that hangs: the VM gets its next action', async () => {
    const cmd = script('ok.sh', 'exit 0');
    const h = harness({
      actionTimeoutMs: 200,
      hypervisorFor: async () => ({ ...fakeHv('p', [], new Map()), destroy: () => new Promise<void>(() => undefined) }),
    });
    h.runner.run(event('db1'), 'restart', []);
    h.runner.run(event('db1'), 'exec', [cmd]);
    await h.runner.idle();
    expect(h.results.map((x) => [x.r.action, x.r.ok])).toEqual([
      ['restart', false],
      ['exec', true],
    ]);
    expect(h.results[0]!.r.error!.message).toContain('did not finish within 200 ms');
  });

  it('idle() resolves at once with nothing to do', async () => {
    await harness().runner.idle();
  });
});

describe('ActionRateLimiter', () => {
  it('allows max per sliding window, per VM, and counts refusals', () => {
    const l = new ActionRateLimiter({ max: 3, windowMs: 600_000 });
    expect([0, 1000, 2000].map((t) => l.allow('a', t))).toEqual([true, true, true]);
    expect(l.allow('a', 3000)).toBe(false);
    expect(l.allow('b', 3000)).toBe(true);
    expect(l.nextAllowedAt('a', 3000)).toBe(600_000);
    expect(l.allow('a', 599_999)).toBe(false);
    // the first one leaves the window at 600 000 ms: one slot, not three
    expect(l.allow('a', 600_000)).toBe(true);
    expect(l.allow('a', 600_001)).toBe(false);
    expect(l.allow('a', 602_000)).toBe(true);
    expect(l.refused('a')).toBe(3);
    expect(l.refused()).toBe(3);
  });

  it('defaults to 3 per 10 minutes and refuses nonsense limits', () => {
    const l = new ActionRateLimiter();
    expect([l.max, l.windowMs]).toEqual([3, 600_000]);
    expect(() => new ActionRateLimiter({ max: 0 })).toThrow(RangeError);
    expect(() => new ActionRateLimiter({ windowMs: 0 })).toThrow(RangeError);
  });
});

describe('parseAction', () => {
  it('parses the three actions', () => {
    expect(parseAction('exec', ['/bin/true', '-x', 'y'])).toEqual({ kind: 'exec', command: '/bin/true', args: ['-x', 'y'] });
    expect(parseAction('exec', ['logger'])).toEqual({ kind: 'exec', command: 'logger', args: [] });
    expect(parseAction('restart', [])).toEqual({ kind: 'restart' });
    expect(parseAction('failover', [])).toEqual({ kind: 'failover' });
    expect(parseAction('failover', ['--standby-uri', 'qemu+ssh://h/system', '--standby-name=x'])).toEqual({
      kind: 'failover',
      standbyUri: 'qemu+ssh://h/system',
      standbyName: 'x',
    });
  });

  it.each([
    ['exec', []],
    ['exec', ['']],
    ['exec', ['scripts/relative.sh']],
    ['restart', ['--force']],
    ['failover', ['--standby-uri']],
    ['failover', ['--standby-uri', '--standby-name', 'x']],
    ['failover', ['--standby-uri', 'not a uri']],
    ['failover', ['--standby-uri', 'qemu:///a', '--standby-uri', 'qemu:///b']],
    ['failover', ['--standby-name', 'a/b']],
    ['failover', ['qemu:///system']],
    ['failover', ['--standby-host', 'h']],
    ['migrate', []],
  ])('refuses %s %j', (action, args) => {
    expect(() => parseAction(action, args)).toThrow(VesperError);
  });
});
