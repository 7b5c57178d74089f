// vesperd as an operator runs it, on a throw-away configuration: one store, one vesperd (a
// second one on the same configuration refuses and touches nothing), and SIGHUP does not kill
// it. Real vesperd processes from the built bundle, the real CLI; libvirt's test driver (no
// domains of ours) so that nothing here needs a guest.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, exitStatusFor } from '../../proto/errors.js';
import { projectRoot } from '../helpers/project-root.js';
import { VESPER, VesperdProcess, writeVesperdConfig } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why = process.getuid?.() !== 0 ? 'needs root (the API socket is given to a group)' : '';
if (why) console.warn(`SKIP daemon lifecycle tests: ${why}`);

/** A vesperd started by hand, to see how it ends: exit status and log. */
function runDaemon(config: string, timeoutMs: number): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [VESPER, 'daemon', '--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, VESPER_KEY_DIR: join(projectRoot(), '.cache', 'keys') },
    });
    let stderr = '';
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('exit', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, stderr });
    });
  });
}

describe.skipIf(Boolean(why))('vesperd lifecycle', () => {
  const dirs: string[] = [];
  const daemons: VesperdProcess[] = [];

  /** A fresh configuration and a vesperd on it (not started). */
  function fresh(): { d: VesperdProcess; config: string; socket: string; store: string } {
    const dir = mkdtempSync('/tmp/vesperd-life-');
    dirs.push(dir);
    const socket = join(dir, 'run', 'vesperd.sock');
    const store = join(dir, 'events.db');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store,
      domains: ['vesper-lifecycle-none-*'],
      more: { libvirt: { uri: 'test:///default' } },
    });
    const d = new VesperdProcess(config, socket);
    daemons.push(d);
    return { d, config, socket, store };
  }

  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.killAll();
  });
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a second vesperd on the same configuration: a clear error, and the first keeps its socket and store', async () => {
    const { d, config, socket, store } = fresh();
    await d.start();
    const before = statSync(socket);
    const storeBefore = statSync(store);
    const second = await runDaemon(config, 60_000);
    expect(second.signal).toBeNull();
    expect(second.code).toBe(exitStatusFor(ErrorCode.DAEMON_RUNNING));
    expect(second.stderr).toContain(ErrorCode.DAEMON_RUNNING);
    expect(second.stderr).toContain(`pid ${d.pid}`);
    // the first vesperd's socket is the same file, and it still answers on it
    const after = statSync(socket);
    expect(after.ino).toBe(before.ino);
    expect((await d.cli(['list'])).code).toBe(0);
    expect(statSync(store).ino).toBe(storeBefore.ino);
    // and once the first has stopped, a new one starts on the same configuration
    await d.stop();
    const { d: again } = { d: new VesperdProcess(config, socket) };
    daemons.push(again);
    await again.start();
    expect((await again.cli(['list'])).code).toBe(0);
  }, 180_000);

  it('survives SIGHUP: logged, the configuration read again, still serving on the same socket', async () => {
    const { d, socket } = fresh();
    await d.start();
    const pid = d.pid;
    const ino = statSync(socket).ino;
    d.signal('SIGHUP');
    // SIGHUP reloads the configuration (issue 20); it must still never end or restart vesperd
    await waitFor('the SIGHUP log line', () => d.log.includes('reloading the configuration'), 10_000, 50);
    await sleep(500);
    expect(d.pid).toBe(pid);
    expect(statSync(socket).ino).toBe(ino);
    expect((await d.cli(['list'])).code).toBe(0);
    d.signal('SIGHUP'); // and again: not a once-only handler
    await sleep(500);
    expect(d.pid).toBe(pid);
    expect((await d.cli(['list'])).code).toBe(0);
  }, 120_000);

  it('starts without libvirt: a clear warning, SSH targets managed, the API answering', async () => {
    const dir = mkdtempSync('/tmp/vesperd-life-');
    dirs.push(dir);
    const socket = join(dir, 'run', 'vesperd.sock');
    const config = writeVesperdConfig(join(dir, 'vesper.yaml'), {
      socket,
      store: join(dir, 'events.db'),
      domains: ['*'],
      more: {
        // a libvirtd that is not there
        libvirt: { uri: `qemu+unix:///system?socket=${join(dir, 'no-libvirtd.sock')}` },
        ssh: { targets: { 'cloud-vm': { target: 'root@127.0.0.1:1' } } },
      },
    });
    const d = new VesperdProcess(config, socket);
    daemons.push(d);
    await d.start();
    expect(d.log).toContain(ErrorCode.LIBVIRT_UNAVAILABLE);
    expect(d.log).toMatch(/libvirt is not available: vesperd runs without it/);
    const vms = await d.json<Array<{ name: string; transport: string; state: string }>>(['list']);
    expect(vms.map((v) => v.name)).toEqual(['cloud-vm']);
    expect(vms[0]!.transport).toBe('ssh');
    // the SSH target's link is tried (and fails on its own terms, not libvirt's)
    await waitFor(
      'the SSH link tried',
      async () => (await d.json<{ linkErrorCode: string | null }>(['status', 'cloud-vm'])).linkErrorCode,
      30_000,
      250,
    );
    const st = await d.json<{ linkErrorCode: string }>(['status', 'cloud-vm']);
    expect(st.linkErrorCode).toMatch(/^VSP_SSH_/);
    // still alive after a few background retries
    await sleep(3000);
    expect(d.pid).toBeGreaterThan(0);
    expect((await d.cli(['list'])).code).toBe(0);
  }, 120_000);
});
