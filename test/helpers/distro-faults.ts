// The faults of a real Debian guest with systemd, driven through its sshd, and what
// `vesper analyze` says of each: one booted guest (test/rigs/distro) per test file, vesperd and
// the CLI as users run them, the signal, process, oom and heartbeat probes attached. Shared by
// the Debian 12 (kernel 6.1) and Debian 13 (kernel 6.12) files.
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Analysis, Verdict } from '../../host/analysis/types.js';
import { bootDistro, type DistroGuest } from '../rigs/distro/rig.js';
import type { Distro } from '../rigs/distro/image.js';
import { VesperdProcess, writeVesperdConfig } from './vesperd-process.js';
import { sleep, waitFor } from './wait.js';

export function distroFaultSuite(distro: Distro): void {
  const why = process.getuid?.() !== 0 ? 'needs root (libvirtd, QEMU)' : process.arch !== 'x64' ? 'needs an x86-64 host' : '';
  if (why) console.warn(`SKIP ${distro} fault tests: ${why}`);

  describe.skipIf(Boolean(why))(`faults of a ${distro} guest with systemd, and vesper analyze`, () => {
    let g: DistroGuest;
    let dir: string;
    let d: VesperdProcess;
    const trail: string[] = [];

    /** Asks `analyze --last -o json` until a verdict passes `ok` (bounded). */
    const verdictFor = async (
      what: string,
      ok: (v: Verdict, a: Analysis) => boolean,
      timeoutMs = 45_000,
    ): Promise<{ a: Analysis; v: Verdict }> => {
      let last: Analysis | null = null;
      try {
        return await waitFor(
          what,
          async () => {
            last = await d.json<Analysis>(['analyze', g.name, '--last']).catch(() => null);
            const v = last?.verdicts.find((x) => ok(x, last!));
            if (!last || !v) return undefined;
            trail.push(`${what}: ${JSON.stringify(last.verdicts.map((x) => [x.kind, x.scope, x.summary]))}`);
            return { a: last, v };
          },
          timeoutMs,
          1000,
        );
      } catch (err) {
        const seen = last as Analysis | null;
        throw new Error(
          `${(err as Error).message}; last verdicts: ${JSON.stringify(seen?.verdicts.map((v) => [v.kind, v.scope, v.summary]) ?? null)}`,
        );
      }
    };

    const mainPid = async (unit: string): Promise<number> => Number((await g.ssh(`systemctl show -p MainPID --value ${unit}`)).trim());

    beforeAll(async () => {
      // TCG on a loaded 2-core machine: the first boot generates sshd's host keys
      g = await bootDistro(distro, { bootBudgetMs: 480_000, onProgress: (s, x) => console.warn(`${distro}: ${s}${x ? `: ${x}` : ''}`) });
      dir = mkdtempSync('/tmp/vesper-distro-faults-');
      chmodSync(dir, 0o755);
      const socket = join(dir, 'run', 'vesperd.sock');
      const config = writeVesperdConfig(join(dir, 'vesper.yaml'), { socket, store: join(dir, 'events.db'), domains: [g.name] });
      d = new VesperdProcess(config, socket);
      await d.start();
      const linked = (): Promise<boolean> => d.probesLoaded(g.name);
      await d.waitLinked(g.name, 120_000, 1000);
      await d.ok(['attach', g.name, 'signal', 'process', 'oom', 'heartbeat', '--param', 'interval_ms=1000']);
      await waitFor('probes loaded', linked, 120_000, 1000);
    }, 600_000);

    afterAll(async () => {
      if (process.env['VESPER_TEST_VERBOSE']) console.warn(`${trail.join('\n')}\n${d?.log.slice(-8000) ?? ''}`);
      await d?.killAll();
      await g?.destroy();
      if (dir) rmSync(dir, { recursive: true, force: true });
    }, 120_000);

    it('a real NULL dereference in a Restart=on-failure service: app-crash, its unit, restarted by systemd after N ms', async () => {
      const pid = await mainPid('vesper-crashy');
      expect(pid).toBeGreaterThan(1);
      await g.ssh(`kill -USR1 ${pid}`); // its handler stores to address 0
      const { a, v } = await verdictFor(
        'app-crash of vesper-crashy',
        (v) => v.kind === 'app-crash' && (v.details?.['target'] as { pid?: number })?.pid === pid && v.details?.['restart'] !== undefined,
      );
      expect(v).toMatchObject({
        scope: 'service',
        confidence: 'confident',
        details: { signal: 'SIGSEGV', sender: 'kernel', unit: 'vesper-crashy.service' },
      });
      expect(v.details?.['cgroup']).toBe('/system.slice/vesper-crashy.service');
      // the restart may be read a moment after the crash: ask again until it is there
      const { v: r } = await verdictFor(
        'the restart by systemd',
        (x) => x.kind === 'app-crash' && (x.details?.['target'] as { pid?: number })?.pid === pid && Boolean(x.details?.['restart']),
      );
      const restart = r.details!['restart'] as { by: string; afterMs: number; pid: number };
      expect(restart.by).toBe('systemd');
      expect(restart.afterMs).toBeGreaterThanOrEqual(100); // RestartSec=100ms
      expect(restart.afterMs).toBeLessThan(30_000);
      expect(restart.pid).toBe(await mainPid('vesper-crashy'));
      expect(r.summary).toMatch(/systemd restarted vesper-crashy\.service \d+ ms later/);
      expect(a.anchor.mode).toBe('last');
      const text = await d.ok(['analyze', g.name, '--last']);
      expect(text).toContain('app-crash (service, confident)');
      expect(text).toMatch(/systemd restarted vesper-crashy\.service \d+ ms later/);
    });

    it('an OOM kill in a service with MemoryMax=: oom of the service, naming its unit', async () => {
      await g.ssh('systemctl start vesper-memhog.service');
      const { v } = await verdictFor(
        'the OOM kill in vesper-memhog',
        (v) => v.kind === 'oom' && v.details?.['unit'] === 'vesper-memhog.service',
        90_000,
      );
      expect(v).toMatchObject({ scope: 'service', confidence: 'confident', details: { cgroup: '/system.slice/vesper-memhog.service' } });
      expect(v.summary).toContain('vesper-memhog.service');
      const text = await d.ok(['analyze', g.name, '--last']);
      expect(text).toContain('oom (service, confident)');
    });

    it('systemctl stop nginx: a planned stop of nginx.service, not a failure', async () => {
      const master = await mainPid('nginx');
      expect(master).toBeGreaterThan(1);
      await g.ssh('systemctl stop nginx');
      const { a, v } = await verdictFor(
        'the planned stop of nginx',
        (v) => v.kind === 'planned-stop' && v.details?.['unit'] === 'nginx.service',
      );
      expect(v.scope).toBe('service');
      expect(
        a.verdicts.filter((x) => x.kind === 'app-killed' || x.kind === 'app-crash').filter((x) => x.atUs >= v.atUs - 5_000_000),
      ).toEqual([]);
      const text = await d.ok(['analyze', g.name, '--last']);
      expect(text).toContain('planned-stop (service, confident)');
      expect(text).toContain('nginx.service');
    });

    it('kill -9 of nginx’s master by an administrator: an admin kill, with the unit and what systemd did', async () => {
      await g.ssh('systemctl start nginx');
      await sleep(1000);
      const master = await mainPid('nginx');
      expect(master).toBeGreaterThan(1);
      await g.ssh(`kill -9 ${master}`);
      const { v } = await verdictFor(
        'the admin kill of nginx',
        (v) => v.kind === 'app-killed' && (v.details?.['target'] as { pid?: number })?.pid === master,
      );
      expect(v).toMatchObject({
        scope: 'service',
        confidence: 'confident',
        details: { signal: 'SIGKILL', by: 'administrator', unit: 'nginx.service' },
      });
      expect(String(v.details?.['senderCgroup'])).toMatch(/\/session-[^/]+\.scope$/);
      expect(v.summary).toContain("an administrator's command from the login session");
      const text = await d.ok(['analyze', g.name, '--last']);
      expect(text).toContain('app-killed (service, confident)');
    });
  });
}
