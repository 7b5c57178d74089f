// The Pacemaker rig against the real thing: Corosync 3 and Pacemaker 2.1 from Debian, started by
// scripts/pacemaker-rig.sh. One node: an ocf:pacemaker:Dummy with a 10 s monitor is made to fail
// (crm_resource --fail) and Pacemaker restarts it. Two nodes (each in its own namespaces): a
// location rule on a node attribute moves the Dummy away from a node marked unhealthy with
// attrd_updater and back once it is healthy again. After each rig stops, no cluster process,
// namespace or mount may be left.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PacemakerRig, RIG_LOG_DIR, RIG_SCRIPT } from '../rigs/pacemaker/rig.js';
import { waitFor } from '../helpers/wait.js';

/** Why this suite cannot run here, or '' once the cluster stack is installed (install is idempotent). */
function whyNoPacemaker(): string {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (installs packages, makes namespaces, runs corosync and pacemakerd)';
  const r = spawnSync('bash', [RIG_SCRIPT, 'install'], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: SETUP_TIMEOUT });
  if (r.status === 100) return `the Pacemaker/Corosync Debian packages could not be installed: ${r.stderr.trim().split('\n').pop()}`;
  // Any other failure is a real one: let the tests run and fail on it.
  if (r.status !== 0) console.warn(`pacemaker-rig.sh install failed (${r.status ?? r.signal}):\n${r.stderr}`);
  return '';
}

const SETUP_TIMEOUT = 15 * 60_000; // a fresh machine apt-gets the cluster stack first
const why = whyNoPacemaker();
if (why) console.warn(`SKIP pacemaker rig tests: ${why}`);
const progress = (line: string): void => console.info(line);

/**
 * "pid comm" of every live corosync / pacemakerd / pacemaker-* process on the machine. Zombies
 * do not count: they are dead, waiting for PID 1 (which reaps slowly on some machines).
 */
function clusterProcesses(): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ')'.
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z') continue;
    if (comm === 'corosync' || comm === 'pacemakerd' || comm.startsWith('pacemaker-')) found.push(`${pid} ${comm}`);
  }
  return found;
}

function rigLeftovers(): string[] {
  const left = clusterProcesses();
  if (existsSync('/run/vesper-pcmk-rig')) left.push('/run/vesper-pcmk-rig');
  if (existsSync('/run/netns')) left.push(...readdirSync('/run/netns').filter((n) => n.startsWith('vesper-pcmk-')));
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  if (mounts.includes('vesper-pcmk')) left.push('a vesper-pcmk mount');
  return left;
}

function dumpLogs(): void {
  if (!existsSync(RIG_LOG_DIR)) return;
  for (const node of readdirSync(RIG_LOG_DIR)) {
    for (const file of ['corosync.log', 'pacemaker.log']) {
      const path = join(RIG_LOG_DIR, node, file);
      if (!existsSync(path)) continue;
      const tail = readFileSync(path, 'utf8').trimEnd().split('\n').slice(-40).join('\n');
      console.error(`---- ${path} (last 40 lines)\n${tail}`);
    }
  }
}

/** A Dummy with a 10 s monitor: what a VM resource would have, minus the VM. */
const dummy = (id: string): string =>
  `<primitive id="${id}" class="ocf" provider="pacemaker" type="Dummy">
     <operations><op id="${id}-monitor-10s" name="monitor" interval="10s" timeout="20s"/></operations>
   </primitive>`;

describe.skipIf(Boolean(why))('Pacemaker rig, one node', () => {
  let rig: PacemakerRig | undefined;
  const RSC = 'vesper-dummy';

  beforeAll(async () => {
    const t0 = performance.now();
    rig = await PacemakerRig.start({ nodes: 1, onProgress: progress });
    console.info(`one-node rig online after ${Math.round(performance.now() - t0)} ms`);
  }, SETUP_TIMEOUT);

  beforeEach(({ onTestFailed }) => onTestFailed(dumpLogs));

  afterAll(async () => {
    // Also when start() or a test failed: stopAll() cleans up whatever a rig left.
    await (rig ? rig.stop() : PacemakerRig.stopAll());
  }, 120_000);

  it('has its one node online, reachable with the host’s own CLI tools', async () => {
    const r = rig as PacemakerRig;
    expect(r.nodeNames).toEqual(['node1']);
    await r.waitOnline(10_000);
    // One node shares the host's network namespace: the host's tools (vesper's) reach it as they are.
    expect(r.commandFor('node1', 'crm_mon', ['-1'])).toEqual({ file: 'crm_mon', args: ['-1'] });
    const out = await r.check('node1', 'crm_node', ['--name']);
    expect(out.trim()).toBe('node1');
  });

  it('runs a Dummy with a 10 s monitor', async () => {
    const r = rig as PacemakerRig;
    await r.createPrimitive(dummy(RSC));
    const state = await waitFor(
      'the Dummy to run',
      async () => {
        const s = await r.resourceState(RSC);
        return s.running ? s : false;
      },
      15_000,
      50,
    );
    expect(state).toEqual({ running: true, node: 'node1', failCount: 0 });
  });

  it('reports a CLI tool’s failure as an exit code, not an exception', async () => {
    const r = await (rig as PacemakerRig).run('node1', 'crm_resource', ['--locate', '--resource', 'no-such-resource']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no-such-resource/);
  });

  it('restarts the Dummy after crm_resource --fail, with a higher fail-count', async () => {
    const r = rig as PacemakerRig;
    const before = await r.resourceState(RSC);
    const t0 = performance.now();
    await r.check('node1', 'crm_resource', ['--fail', '--resource', RSC, '--node', 'node1']);
    const after = await waitFor(
      'Pacemaker to restart the failed Dummy',
      async () => {
        const s = await r.resourceState(RSC);
        return s.failCount > before.failCount && s.running ? s : false;
      },
      15_000,
      20,
    );
    console.info(`Dummy failed and running again after ${Math.round(performance.now() - t0)} ms (fail-count ${after.failCount})`);
    expect(after.node).toBe('node1');
  });

  it('deletes the Dummy, which Pacemaker then stops', async () => {
    const r = rig as PacemakerRig;
    await r.deleteResource(RSC);
    expect((await r.resourceState(RSC)).running).toBe(false);
    expect((await r.run('node1', 'cibadmin', ['--query', '--xpath', `//primitive[@id='${RSC}']`])).code).toBe(105);
  });

  it('stops and leaves nothing running', async () => {
    const r = rig as PacemakerRig;
    const t0 = performance.now();
    await r.stop();
    console.info(`one-node rig stopped in ${Math.round(performance.now() - t0)} ms`);
    expect(rigLeftovers()).toEqual([]);
    await r.stop(); // a second stop is harmless
    await PacemakerRig.stopAll();
    expect(rigLeftovers()).toEqual([]);
  });
});

describe.skipIf(Boolean(why))('Pacemaker rig, two nodes in their own namespaces', () => {
  let rig: PacemakerRig | undefined;
  const RSC = 'vesper-dummy2';
  const ATTR = 'vesper-health';

  beforeAll(async () => {
    const t0 = performance.now();
    rig = await PacemakerRig.start({ nodes: 2, onProgress: progress });
    console.info(`two-node rig online after ${Math.round(performance.now() - t0)} ms`);
  }, SETUP_TIMEOUT);

  beforeEach(({ onTestFailed }) => onTestFailed(dumpLogs));

  afterAll(async () => {
    await (rig ? rig.stop() : PacemakerRig.stopAll());
  }, 120_000);

  it('has both nodes online, each seeing the other', async () => {
    const r = rig as PacemakerRig;
    expect(r.nodeNames).toEqual(['node1', 'node2']);
    await r.waitOnline(10_000);
    for (const node of r.nodeNames) expect((await r.check(node, 'crm_node', ['--name'])).trim()).toBe(node);
  });

  it('moves the Dummy off a node marked unhealthy and back when it is healthy again', async () => {
    const r = rig as PacemakerRig;
    await r.createPrimitive(dummy(RSC));
    const constraints = [
      `<rsc_location id="${RSC}-prefers-node1" rsc="${RSC}" node="node1" score="100"/>`,
      `<rsc_location id="${RSC}-health" rsc="${RSC}">
         <rule id="${RSC}-health-rule" score="-INFINITY">
           <expression id="${RSC}-health-expr" attribute="${ATTR}" operation="eq" value="0"/>
         </rule>
       </rsc_location>`,
    ];
    for (const xml of constraints) await r.check('node1', 'cibadmin', ['--create', '--scope', 'constraints', '--xml-text', xml]);
    const runsOn = (node: string) => async () => {
      const s = await r.resourceState(RSC);
      return s.running && s.node === node ? s : false;
    };
    await waitFor('the Dummy to run on node1', runsOn('node1'), 15_000, 50);

    // Marked from node2's side: attrd is cluster-wide, and the DC may be either node.
    let t0 = performance.now();
    await r.check('node2', 'attrd_updater', ['--name', ATTR, '--update', '0', '--node', 'node1']);
    await waitFor('the Dummy to move to node2', runsOn('node2'), 15_000, 10);
    const away = performance.now() - t0;

    t0 = performance.now();
    await r.check('node2', 'attrd_updater', ['--name', ATTR, '--update', '1', '--node', 'node1']);
    await waitFor('the Dummy to move back to node1', runsOn('node1'), 15_000, 10);
    const back = performance.now() - t0;
    console.info(`Dummy moved to node2 in ${Math.round(away)} ms, back to node1 in ${Math.round(back)} ms`);

    await r.deleteResource(RSC);
    expect(await r.run('node1', 'cibadmin', ['--query', '--xpath', `//rsc_location[@rsc='${RSC}']`])).toMatchObject({ code: 105 });
  });

  it('stops and leaves no process, namespace or mount behind', async () => {
    const r = rig as PacemakerRig;
    const t0 = performance.now();
    await r.stop();
    console.info(`two-node rig stopped in ${Math.round(performance.now() - t0)} ms`);
    expect(rigLeftovers()).toEqual([]);
  });
});
