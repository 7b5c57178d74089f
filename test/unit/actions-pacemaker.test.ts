// pacemaker-fail and pacemaker-attr: how they parse, and the runner executing them against fake
// crm_resource / attrd_updater / crm_node scripts that record their command lines. PATH is the
// fakes' directory alone while a test runs, so a real Pacemaker on this machine is never
// touched and a missing fake is a missing tool.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FenceLock } from '../../host/actions/fence-lock.js';
import { PacemakerActions, runTool, type PacemakerSettings } from '../../host/actions/pacemaker.js';
import { actionProblemForVm, parseAction } from '../../host/actions/parse.js';
import { ActionRateLimiter } from '../../host/actions/rate-limit.js';
import { ActionRunner, type ActionResult } from '../../host/actions/runner.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { ErrorCode, VesperError, exitStatusFor } from '../../proto/errors.js';

let dir: string;
let bin: string;
let calls: string;
let savedPath: string | undefined;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-pcmk-'));
  bin = join(dir, 'bin');
  mkdirSync(bin);
  calls = join(dir, 'calls');
  savedPath = process.env['PATH'];
  process.env['PATH'] = bin;
});
afterEach(() => {
  process.env['PATH'] = savedPath;
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A fake Pacemaker tool: appends "NAME [arg] [arg]... LC_ALL=..." to the calls file, then runs
 * `body` (sh; print to stderr, sleep, exit with a status).
 */
function fake(name: string, body = 'exit 0'): void {
  const p = join(bin, name);
  writeFileSync(
    p,
    // The line is built first and written with one printf: fakes run in parallel (two VMs' actions),
    // and a line written piece by piece could interleave with another's.
    `#!/bin/sh\nline="\${0##*/}"; for a; do line="$line [$a]"; done\nprintf '%s LC_ALL=%s\\n' "$line" "$LC_ALL" >> '${calls}'\n${body}\n`,
  );
  chmodSync(p, 0o755);
}

function called(): string[] {
  return existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n').filter(Boolean) : [];
}

let nextId = 1;
function event(vm: string, over: Partial<VesperEvent> = {}): VesperEvent {
  return {
    id: nextId++,
    vm,
    plugin: 'channel',
    instance: 0,
    event: 'heartbeat-lost',
    guestTimeUs: null,
    hostTimeUs: Date.now() * 1000,
    source: null,
    payload: {},
    disposition: 'action',
    ...over,
  };
}

const SETTINGS: PacemakerSettings = {
  vms: { web1: { resource: 'vm-web1', node: 'node1' }, web2: { resource: 'vm-web2' } },
  healthAttribute: 'vesper-health',
  toolsTimeoutMs: 5000,
};

function harness(settings: Partial<PacemakerSettings> = {}, limiter = new ActionRateLimiter({ max: 10, windowMs: 60_000 })) {
  const results: Array<{ ev: VesperEvent; r: ActionResult }> = [];
  const runner = new ActionRunner({
    hypervisorFor: () => Promise.reject(new Error('no libvirt in this test')),
    lock: new FenceLock(join(dir, 'fence')),
    limiter,
    execTimeoutMs: 5000,
    onResult: (ev, r) => void results.push({ ev, r }),
    pacemaker: new PacemakerActions({ ...SETTINGS, ...settings }),
  });
  return { runner, results, limiter };
}

const CIB_DOWN =
  "echo 'crm_resource: Could not connect to the CIB: Transport endpoint is not connected' >&2\necho 'Error performing operation: Not connected' >&2\nexit 102";

describe('parseAction: pacemaker-fail and pacemaker-attr', () => {
  it('parses them, with and without their options', () => {
    expect(parseAction('pacemaker-fail', [])).toEqual({ kind: 'pacemaker-fail' });
    expect(parseAction('pacemaker-fail', ['--resource', 'vm-web1', '--node=node-1.example'])).toEqual({
      kind: 'pacemaker-fail',
      resource: 'vm-web1',
      node: 'node-1.example',
    });
    expect(parseAction('pacemaker-fail', ['--resource=vm-web1:0'])).toEqual({ kind: 'pacemaker-fail', resource: 'vm-web1:0' });
    expect(parseAction('pacemaker-attr', [])).toEqual({ kind: 'pacemaker-attr' });
    expect(parseAction('pacemaker-attr', ['--name', '#health-vesper', '--value', 'red', '--node', 'n2'])).toEqual({
      kind: 'pacemaker-attr',
      name: '#health-vesper',
      value: 'red',
      node: 'n2',
    });
    // a score-like value is a value, not an option
    expect(parseAction('pacemaker-attr', ['--value=-INFINITY'])).toEqual({ kind: 'pacemaker-attr', value: '-INFINITY' });
  });

  it.each([
    ['pacemaker-fail', ['vm-web1'], 'unexpected argument "vm-web1" (usage: pacemaker-fail [--resource RSC] [--node NODE])'],
    ['pacemaker-fail', ['--rsc', 'x'], 'unexpected option "--rsc"'],
    ['pacemaker-fail', ['--resource'], '--resource needs a value'],
    ['pacemaker-fail', ['--resource', '--node', 'n1'], '--resource needs a value'],
    ['pacemaker-fail', ['--resource', 'a', '--resource', 'b'], '--resource given twice'],
    ['pacemaker-fail', ['--resource', '-x'], '--resource "-x" is not a Pacemaker resource id'],
    ['pacemaker-fail', ['--resource', 'vm web1'], 'is not a Pacemaker resource id'],
    ['pacemaker-fail', ['--resource', '1vm'], "a letter or '_' first"],
    ['pacemaker-fail', ['--node', '-N'], '--node "-N" is not a Pacemaker node name'],
    ['pacemaker-fail', ['--node', 'a/b'], 'is not a Pacemaker node name'],
    ['pacemaker-attr', ['--name', 'a b'], '--name "a b" is not a node attribute name'],
    ['pacemaker-attr', ['--name', '-n'], 'is not a node attribute name'],
    ['pacemaker-attr', ['--value='], '--value is empty (to remove the attribute: attrd_updater -n NAME -D)'],
    ['pacemaker-attr', ['--value', 'a\nb'], 'without control characters'],
    ['pacemaker-attr', ['--node', 'n1', '--node', 'n2'], '--node given twice'],
    [
      'pacemaker-attr',
      ['--resource', 'x'],
      'unexpected option "--resource" (usage: pacemaker-attr [--name ATTR] [--value VALUE] [--node NODE])',
    ],
  ])('refuses %s %j: %s', (action, args, message) => {
    let err: unknown;
    try {
      parseAction(action, args);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VesperError);
    expect((err as VesperError).code).toBe(ErrorCode.ACTION_FAILED);
    expect((err as VesperError).message).toContain(message);
  });

  it('says when a filter rule could never run pacemaker-fail', () => {
    const mapped = (vm: string): boolean => vm === 'web1';
    const fail = parseAction('pacemaker-fail', []);
    expect(actionProblemForVm(fail, 'web1', mapped)).toBeNull();
    expect(actionProblemForVm(fail, '*', mapped)).toBeNull();
    expect(actionProblemForVm(fail, 'db1', mapped)).toBe(
      'pacemaker-fail needs the resource of db1: --resource RSC in args, or pacemaker.vms.db1.resource in the config',
    );
    expect(actionProblemForVm(parseAction('pacemaker-fail', ['--resource', 'vm-db1']), 'db1', mapped)).toBeNull();
    expect(actionProblemForVm(fail, '', mapped)).toContain('needs a VM');
    expect(actionProblemForVm(parseAction('pacemaker-attr', []), '', mapped)).toBeNull();
    expect(actionProblemForVm(parseAction('restart', []), 'db1', mapped)).toBeNull();
  });

  it('the new codes have their exit statuses', () => {
    expect(ErrorCode.PACEMAKER_UNAVAILABLE).toBe('VSP_PACEMAKER_UNAVAILABLE');
    expect(ErrorCode.PACEMAKER_MAPPING).toBe('VSP_PACEMAKER_MAPPING');
    expect(exitStatusFor(ErrorCode.PACEMAKER_UNAVAILABLE)).toBe(69);
    expect(exitStatusFor(ErrorCode.PACEMAKER_MAPPING)).toBe(78);
  });
});

describe('ActionRunner: pacemaker-fail', () => {
  it('fails the mapped resource on the mapped node, in the C locale, and reports what ran', async () => {
    fake('crm_resource');
    const h = harness();
    h.runner.run(event('web1'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(called()).toEqual(['crm_resource [--fail] [-r] [vm-web1] [-N] [node1] LC_ALL=C']);
    const r = h.results[0]!.r;
    expect(r).toMatchObject({
      action: 'pacemaker-fail',
      ok: true,
      detail: {
        resource: 'vm-web1',
        node: 'node1',
        nodeFrom: 'mapping',
        command: ['crm_resource', '--fail', '-r', 'vm-web1', '-N', 'node1'],
        exitCode: 0,
        stderr: '',
        timedOut: false,
      },
    });
    expect(typeof r.detail['durationMs']).toBe('number');
    expect(typeof r.detail['toolDurationMs']).toBe('number');
  });

  it("without a node in the mapping asks crm_node -n, once; the action's own options win", async () => {
    fake('crm_node', 'echo node7');
    fake('crm_resource');
    const h = harness();
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    await h.runner.idle();
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    h.runner.run(event('web3'), 'pacemaker-fail', ['--resource', 'vm-other', '--node', 'node9']);
    h.runner.run(event('web1'), 'pacemaker-fail', ['--node=node2']);
    await h.runner.idle();
    // VMs run in parallel: their order is not fixed
    expect(called().sort()).toEqual([
      'crm_node [-n] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-other] [-N] [node9] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-web1] [-N] [node2] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-web2] [-N] [node7] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-web2] [-N] [node7] LC_ALL=C',
    ]);
    expect(h.results.map((x) => `${x.ev.vm} ${String(x.r.detail['nodeFrom'])}`).sort()).toEqual([
      'web1 action',
      'web2 crm_node',
      'web2 crm_node',
      'web3 action',
    ]);
    expect(h.results[0]!.r.detail['nodeLookup']).toMatchObject({ command: ['crm_node', '-n'], exitCode: 0, stdout: 'node7\n' });
  });

  it("the config may name this host's node instead", async () => {
    fake('crm_resource');
    const h = harness({ node: 'here' });
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(called()).toEqual(['crm_resource [--fail] [-r] [vm-web2] [-N] [here] LC_ALL=C']);
    expect(h.results[0]!.r.detail['nodeFrom']).toBe('config');
  });

  it('identical ones arriving while one runs are coalesced into it: one fail, one fail-count bump', async () => {
    fake('crm_resource', '/bin/sleep 0.3');
    const limiter = new ActionRateLimiter({ max: 2, windowMs: 60_000 });
    const h = harness({}, limiter);
    for (let i = 0; i < 4; i++) h.runner.run(event('web1'), 'pacemaker-fail', []);
    h.runner.run(event('web1'), 'pacemaker-fail', ['--resource', 'vm-web1-alt']);
    await h.runner.idle();
    expect(called()).toEqual([
      'crm_resource [--fail] [-r] [vm-web1] [-N] [node1] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-web1-alt] [-N] [node1] LC_ALL=C',
    ]);
    expect(h.results.filter((x) => x.r.detail['coalesced'])).toHaveLength(3);
    expect(h.results.every((x) => x.r.ok)).toBe(true);
    expect(limiter.refused()).toBe(0);
  });

  it('no resource for the VM is VSP_PACEMAKER_MAPPING at once: nothing runs, nothing counts against the limit', async () => {
    fake('crm_resource');
    const limiter = new ActionRateLimiter({ max: 1, windowMs: 60_000 });
    const h = harness({}, limiter);
    h.runner.run(event('db1'), 'pacemaker-fail', []);
    h.runner.run(event('db1'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(called()).toEqual([]);
    expect(h.results.map((x) => x.r.error)).toEqual([
      {
        code: ErrorCode.PACEMAKER_MAPPING,
        message: 'no Pacemaker resource known for db1: add pacemaker.vms.db1.resource to the config, or --resource RSC to the action',
      },
      expect.objectContaining({ code: ErrorCode.PACEMAKER_MAPPING }),
    ]);
    // the host's own events have no VM to fail
    h.runner.run(event(''), 'pacemaker-fail', ['--resource', 'x']);
    expect(h.results[2]!.r.error).toMatchObject({
      code: ErrorCode.ACTION_FAILED,
      message: "pacemaker-fail needs a VM; this event is the host's own",
    });
  });

  it('a resource or node Pacemaker does not know is VSP_PACEMAKER_MAPPING, with what the tool said', async () => {
    fake(
      'crm_resource',
      `case "$3" in vm-gone) echo "crm_resource: Resource 'vm-gone' not found" >&2 ;; *) echo "crm_resource: Node 'nodeX' not found" >&2 ;; esac\necho 'Error performing operation: No such object' >&2\nexit 105`,
    );
    const h = harness();
    h.runner.run(event('web1'), 'pacemaker-fail', ['--resource', 'vm-gone']);
    h.runner.run(event('web2'), 'pacemaker-fail', ['--node', 'nodeX']);
    await h.runner.idle();
    // Two VMs' actions run in parallel: their results may come in either order.
    const [a, b] = ['web1', 'web2'].map((vm) => h.results.find((x) => x.ev.vm === vm)?.r);
    expect(a!.error!.code).toBe(ErrorCode.PACEMAKER_MAPPING);
    expect(a!.error!.message).toContain(
      "Pacemaker does not know resource vm-gone on node node1 (crm_resource exited with status 105: crm_resource: Resource 'vm-gone' not found",
    );
    expect(a!.detail).toMatchObject({ exitCode: 105, stderr: expect.stringContaining("Resource 'vm-gone' not found") });
    expect(b!.error!.code).toBe(ErrorCode.PACEMAKER_MAPPING);
    expect(b!.error!.message).toContain("Node 'nodeX' not found");
  });

  it('Pacemaker absent: the tool not installed, or a cluster that does not answer, is VSP_PACEMAKER_UNAVAILABLE', async () => {
    const h = harness();
    // nothing in PATH at all
    h.runner.run(event('web1'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(h.results[0]!.r.error!.code).toBe(ErrorCode.PACEMAKER_UNAVAILABLE);
    expect(h.results[0]!.r.error!.message).toBe(
      "pacemaker-fail of web1: crm_resource is not installed here (crm_resource: not found in PATH); Pacemaker's command-line tools are needed (Debian: pacemaker-cli-utils)",
    );
    expect(h.results[0]!.r.detail).toMatchObject({ command: ['crm_resource', '--fail', '-r', 'vm-web1', '-N', 'node1'], exitCode: null });

    fake('crm_resource', CIB_DOWN);
    h.runner.run(event('web1'), 'pacemaker-fail', []);
    await h.runner.idle();
    const r = h.results[1]!.r;
    expect(r.error!.code).toBe(ErrorCode.PACEMAKER_UNAVAILABLE);
    expect(r.error!.message).toBe(
      'pacemaker-fail of web1: the cluster does not answer here (crm_resource exited with status 102: crm_resource: Could not connect to the CIB: Transport endpoint is not connected / Error performing operation: Not connected); is Pacemaker running?',
    );
    expect(r.detail).toMatchObject({ exitCode: 102, stderr: expect.stringContaining('Could not connect to the CIB') });
  });

  it('crm_node missing or failing is VSP_PACEMAKER_UNAVAILABLE, nothing else runs, and it is asked again next time', async () => {
    fake('crm_resource');
    const h = harness();
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(h.results[0]!.r.error!.code).toBe(ErrorCode.PACEMAKER_UNAVAILABLE);
    expect(h.results[0]!.r.error!.message).toContain("cannot learn this host's Pacemaker node name (crm_node: not found in PATH)");

    fake('crm_node', "echo 'error: Could not connect to controller: Connection refused' >&2\nexit 102");
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(h.results[1]!.r.error).toMatchObject({
      code: ErrorCode.PACEMAKER_UNAVAILABLE,
      message: expect.stringContaining('crm_node exited with status 102: error: Could not connect to controller: Connection refused'),
    });
    expect(h.results[1]!.r.detail['nodeLookup']).toMatchObject({ exitCode: 102 });

    fake('crm_node', 'echo node3'); // the cluster came up
    h.runner.run(event('web2'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(h.results[2]!.r.ok).toBe(true);
    expect(called()).toEqual([
      'crm_node [-n] LC_ALL=C',
      'crm_node [-n] LC_ALL=C',
      'crm_resource [--fail] [-r] [vm-web2] [-N] [node3] LC_ALL=C',
    ]);
  });

  it('a tool that hangs is stopped at tools_timeout: a failed result saying the outcome is unknown', async () => {
    fake('crm_resource', 'exec /bin/sleep 30');
    const h = harness({ toolsTimeoutMs: 200 });
    const t0 = Date.now();
    h.runner.run(event('web1'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(Date.now() - t0).toBeLessThan(5000);
    const r = h.results[0]!.r;
    expect(r.error!.code).toBe(ErrorCode.ACTION_FAILED);
    expect(r.error!.message).toContain('whether Pacemaker took it is unknown');
    expect(r.detail).toMatchObject({ timedOut: true, exitCode: null, signal: 'SIGTERM' });
  });

  it('any other failure is VSP_ACTION_FAILED with the exit status and stderr', async () => {
    fake('crm_resource', "echo 'crm_resource: something odd' >&2\nexit 1");
    const h = harness();
    h.runner.run(event('web1'), 'pacemaker-fail', []);
    await h.runner.idle();
    expect(h.results[0]!.r.error).toEqual({
      code: ErrorCode.ACTION_FAILED,
      message: 'pacemaker-fail of web1: crm_resource exited with status 1: crm_resource: something odd',
    });
  });
});

describe('ActionRunner: pacemaker-attr', () => {
  it("sets the health attribute to 0 on the node by default, also for the host's own events", async () => {
    fake('attrd_updater');
    fake('crm_node', 'echo node7');
    const h = harness();
    h.runner.run(event('web1'), 'pacemaker-attr', []);
    h.runner.run(event(''), 'pacemaker-attr', []);
    await h.runner.idle();
    expect(called().sort()).toEqual([
      'attrd_updater [-n] [vesper-health] [-U] [0] [-N] [node1] LC_ALL=C',
      'attrd_updater [-n] [vesper-health] [-U] [0] [-N] [node7] LC_ALL=C',
      'crm_node [-n] LC_ALL=C',
    ]);
    expect(h.results.map((x) => x.r.ok)).toEqual([true, true]);
    expect(h.results.find((x) => x.ev.vm === 'web1')!.r.detail).toMatchObject({
      name: 'vesper-health',
      value: '0',
      node: 'node1',
      command: ['attrd_updater', '-n', 'vesper-health', '-U', '0', '-N', 'node1'],
      exitCode: 0,
    });
  });

  it("the action's name, value and node, and the config's attribute name", async () => {
    fake('attrd_updater');
    const h = harness({ healthAttribute: 'vm-health' });
    h.runner.run(event('web1'), 'pacemaker-attr', ['--name', '#health-vesper', '--value', 'red', '--node', 'n2']);
    h.runner.run(event('web1'), 'pacemaker-attr', ['--value', '-1']);
    await h.runner.idle();
    expect(called()).toEqual([
      'attrd_updater [-n] [#health-vesper] [-U] [red] [-N] [n2] LC_ALL=C',
      'attrd_updater [-n] [vm-health] [-U] [-1] [-N] [node1] LC_ALL=C',
    ]);
  });

  it('identical ones are coalesced; a different value is not', async () => {
    fake('attrd_updater', '/bin/sleep 0.2');
    const h = harness();
    for (let i = 0; i < 3; i++) h.runner.run(event('web1'), 'pacemaker-attr', []);
    h.runner.run(event('web1'), 'pacemaker-attr', ['--value', '1']);
    await h.runner.idle();
    expect(called()).toHaveLength(2);
    expect(h.results.filter((x) => x.r.detail['coalesced'])).toHaveLength(2);
  });

  it('attrd not answering, or the tool missing, is VSP_PACEMAKER_UNAVAILABLE', async () => {
    const h = harness();
    h.runner.run(event('web1'), 'pacemaker-attr', []);
    await h.runner.idle();
    expect(h.results[0]!.r.error!.code).toBe(ErrorCode.PACEMAKER_UNAVAILABLE);
    expect(h.results[0]!.r.error!.message).toContain('attrd_updater is not installed here');
    fake('attrd_updater', "echo 'attrd_updater: Could not update vesper-health=0: Connection refused (111)' >&2\nexit 102");
    h.runner.run(event('web1'), 'pacemaker-attr', []);
    await h.runner.idle();
    expect(h.results[1]!.r.error).toMatchObject({
      code: ErrorCode.PACEMAKER_UNAVAILABLE,
      message: expect.stringContaining('pacemaker-attr vesper-health=0 for web1: the cluster does not answer here'),
    });
    expect(h.results[1]!.r.detail).toMatchObject({ stderr: expect.stringContaining('Connection refused') });
  });
});

describe('runTool', () => {
  it('keeps stdout and stderr apart, caps them, and never rejects', async () => {
    fake('noisy', 'echo out\necho err >&2\nyes x | head -c 10000 >&2\nexit 3');
    process.env['PATH'] = `${bin}:/usr/bin:/bin`;
    const r = await runTool('noisy', ['a b'], 5000);
    expect(r).toMatchObject({
      command: ['noisy', 'a b'],
      exitCode: 3,
      signal: null,
      timedOut: false,
      notInstalled: false,
      stdout: 'out\n',
    });
    expect(r.stderr.startsWith('err\nx\nx\n')).toBe(true);
    expect(r.stderr.length).toBe(4096);
    const missing = await runTool('no-such-tool-here', [], 5000);
    expect(missing).toMatchObject({ notInstalled: true, exitCode: null, stderr: 'not found in PATH' });
  });
});
