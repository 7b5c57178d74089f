// The faults of a real Debian guest with systemd, driven through its sshd or libvirt, and what
// `vesper analyze` says of each: one booted guest (test/rigs/distro) per test file, vesperd and
// the CLI as users run them, the signal, process, oom and heartbeat probes attached. Shared by
// the Debian 12 (kernel 6.1) and Debian 13 (kernel 6.12) files. The tests run in order on the
// one guest: the service faults, what the kernel lacks at attach, a userspace hang, a reboot,
// and last the kernel panic (the domain is destroyed on a crash: <on_crash>destroy).
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
    const bootId = async (): Promise<string> => (await g.ssh('cat /proc/sys/kernel/random/boot_id')).trim();
    const probesLoaded = (): Promise<boolean> => d.probesLoaded(g.name);
    /** Verdicts that call something a failure, made at or after `sinceUs` (host µs). */
    const failuresSince = (a: Analysis, sinceUs: number, kinds: string[]): Verdict[] =>
      a.verdicts.filter((v) => kinds.includes(v.kind) && v.atUs >= sinceUs);

    beforeAll(async () => {
      // TCG on a loaded 2-core machine: the first boot generates sshd's host keys
      g = await bootDistro(distro, { bootBudgetMs: 480_000, onProgress: (s, x) => console.warn(`${distro}: ${s}${x ? `: ${x}` : ''}`) });
      dir = mkdtempSync('/tmp/vesper-distro-faults-');
      chmodSync(dir, 0o755);
      const socket = join(dir, 'run', 'vesperd.sock');
      const config = writeVesperdConfig(join(dir, 'vesper.yaml'), { socket, store: join(dir, 'events.db'), domains: [g.name] });
      d = new VesperdProcess(config, socket);
      await d.start();
      await d.waitLinked(g.name, 120_000, 1000);
      await d.ok(['attach', g.name, 'signal', 'process', 'oom', 'heartbeat', '--param', 'interval_ms=1000']);
      await waitFor('probes loaded', probesLoaded, 120_000, 1000);
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

    it('what the kernel lacks is said at attach: a kprobe on a function it has not is refused with VSP_KPROBE_NO_SYMBOL', async () => {
      const r = await d.cli(['attach', g.name, 'kprobe', '--param', 'spec=vesper_no_such_function']);
      expect(r.code, r.stderr).toBe(72); // EX_OSFILE: a kernel facility missing
      expect(r.stderr).toContain('VSP_KPROBE_NO_SYMBOL');
      expect(r.stderr).toContain(`this kernel (${g.image.kernelRelease}) has no function vesper_no_such_function`);
      // The agent logged the refusal as a warning, and the guest's real journald took it at that
      // priority: the agent's lines (its stderr stream) each at their own, none of them JSON.
      const agentLines = async (args: string) => (await g.ssh(`journalctl -b -u vesper-agent --no-pager ${args}`)).trim().split('\n');
      const entries = (await agentLines('-o json'))
        .map((l) => JSON.parse(l) as { MESSAGE: unknown; PRIORITY: string; _TRANSPORT: string })
        .filter((e) => e._TRANSPORT === 'stdout');
      const said = (what: RegExp) => entries.filter((e) => typeof e.MESSAGE === 'string' && what.test(e.MESSAGE)).map((e) => e.PRIORITY);
      expect(said(/^request failed code=VSP_KPROBE_NO_SYMBOL /)).toContain('4');
      expect(said(/^agent ready /).length).toBeGreaterThan(0);
      expect(new Set(said(/^agent ready /))).toEqual(new Set(['6']));
      expect(said(/^\{/)).toEqual([]);
      const warnings = (await agentLines('-p warning -o cat')).join('\n');
      expect(warnings).toContain('VSP_KPROBE_NO_SYMBOL');
      expect(warnings).not.toContain('agent ready');
      // a function the kernel has is taken (the VESPER capability), and nothing is said of it
      const ok = await d.json<Array<{ name: string; loaded: boolean; warnings: unknown[] }>>([
        'attach',
        g.name,
        'kprobe',
        '--param',
        'spec=do_exit code=%di:s64',
      ]);
      expect(ok).toMatchObject([{ name: 'kprobe', loaded: true, warnings: [] }]);
      await d.ok(['detach', g.name, 'kprobe']);
      const st = await d.json<{
        attached: Array<{ name: string; warnings: Array<{ code: string; message: string }> }>;
        kernelLacks: string[];
      }>(['status', g.name]);
      expect(st.attached.map((a) => a.name).sort()).toEqual(['heartbeat', 'oom', 'process', 'signal']);
      expect(st.kernelLacks).toEqual([]); // tracefs, kprobe_events, PSI, cgroup v2, /dev/kmsg: all there
      // Both kernels' oom/mark_victim carry the memory figures (Linux 6.8 added them; Debian's 6.1
      // has them backported): nothing is lacking, so nothing is said
      for (const p of st.attached) expect(p.warnings, p.name).toEqual([]);
    });

    it(
      'a userspace hang (a runaway real-time task starves every process while the kernel runs): guest-hang from the heartbeat gap, the same agent resumed',
      { timeout: 300_000 },
      async () => {
        const agentBefore = await mainPid('vesper-agent');
        const bootBefore = await bootId();
        const t0 = Date.now() * 1000;
        // A SCHED_FIFO busy loop on the guest's only CPU, with the kernel's guard against RT
        // starvation turned off as real-time set-ups do (6.1: RT throttling, sched_rt_runtime_us
        // = -1; 6.12: also the fair deadline server, which otherwise still gives ordinary tasks
        // 50 ms a second): no SCHED_OTHER task runs for 20 s (systemd, journald, sshd, the agent),
        // while the kernel still takes its interrupts and keeps time. The loop ends by itself
        // (bash's own clock, no fork) and puts both guards back; its sleep lets this command return.
        const fair = '/sys/kernel/debug/sched/fair_server/cpu0/runtime';
        const saved = '/run/vesper-fair-server-runtime';
        await g.ssh(
          `sysctl -q -w kernel.sched_rt_runtime_us=-1 && rm -f ${saved} && ` +
            `if [ -e ${fair} ]; then cat ${fair} > ${saved} && echo 0 > ${fair}; fi && ` +
            'systemd-run --quiet --collect --unit=vesper-rt-hog -p CPUSchedulingPolicy=fifo -p CPUSchedulingPriority=98 ' +
            `/bin/bash -c 'sleep 2; e=$((EPOCHSECONDS + 20)); while ((EPOCHSECONDS < e)); do :; done; ` +
            `if [ -s ${saved} ]; then cat ${saved} > ${fair}; fi; sysctl -q -w kernel.sched_rt_runtime_us=950000'`,
          90_000,
        );
        const { a, v } = await verdictFor(
          'the hang',
          (x) => x.kind === 'guest-hang' && x.details?.['resumed'] === true && x.atUs >= t0,
          150_000,
        );
        // userspace catches up after the starvation: sshd may take a while to answer again
        await g.waitSsh(120_000);
        expect((await g.ssh('sysctl -n kernel.sched_rt_runtime_us')).trim()).toBe('950000'); // the loop put them back
        if (distro === 'debian13') expect(Number(await g.ssh(`cat ${fair}`))).toBeGreaterThan(0);
        expect(v.scope).toBe('guest');
        expect(v.details?.['silentMs']).toBeGreaterThanOrEqual(10_000);
        expect(v.summary).toMatch(
          /Heartbeats stopped at .* for \d+(\.\d+)? s while the hypervisor reported the domain running and the same agent resumed/,
        );
        // the kernel ran on: the same boot, the same agent process, the domain running throughout
        expect(await bootId()).toBe(bootBefore);
        expect(await mainPid('vesper-agent')).toBe(agentBefore);
        expect((await g.hv.state(g.name)).state).toBe('running');
        expect(failuresSince(a, t0, ['agent-fault', 'guest-panic', 'guest-stopped', 'host-paused', 'app-crash'])).toEqual([]);
        const text = await d.ok(['analyze', g.name, '--last']);
        expect(text).toContain('guest-hang (guest, uncertain)');
      },
    );

    it(
      'systemctl reboot: a planned guest stop (rebooted), not a failure; the agent comes back and gets its probes again',
      { timeout: 600_000 },
      async () => {
        const bootBefore = await bootId();
        // this boot's journal outlives the reboot (the image keeps it in memory), so a failure
        // below can show what the stopping agent logged
        await g.ssh(
          "printf '[Journal]\\nStorage=persistent\\n' > /etc/systemd/journald.conf.d/zz-reboot-test.conf && " +
            'mkdir -p /var/log/journal && systemctl restart systemd-journald && journalctl --flush',
        );
        const t0 = Date.now() * 1000;
        await g.sshRun('systemctl reboot', 15_000); // the connection may drop before it answers
        await sleep(5000);
        await g.waitSsh(300_000);
        expect(await bootId()).not.toBe(bootBefore);
        await waitFor('probes loaded again', probesLoaded, 180_000, 1000);
        // Around the shutdown (the failure-like event nearest a few seconds after the request: the
        // stop signals systemd sent), with a window wide enough for a TCG guest's reboot (minutes):
        // --last would take the new boot's latest event, and a 2 min window may not reach back.
        const at = ['analyze', g.name, '--at', new Date(t0 / 1000 + 3000).toISOString(), '--window', '16m'];
        let a: Analysis | null = null;
        await waitFor(
          'the reboot',
          async () => {
            a = await d.json<Analysis>(at);
            return a.verdicts.some((x) => x.kind === 'guest-stopped' && x.details?.['rebooted'] === true && x.atUs >= t0);
          },
          120_000,
          2000,
        ).catch((err: Error) => {
          throw new Error(`${err.message}; verdicts: ${JSON.stringify(a?.verdicts.map((v) => [v.kind, v.summary]) ?? null)}`);
        });
        const got = a as unknown as Analysis;
        const v = got.verdicts.find((x) => x.kind === 'guest-stopped' && x.details?.['rebooted'] === true && x.atUs >= t0)!;
        trail.push(`the reboot: ${JSON.stringify(got.verdicts.filter((x) => x.atUs >= t0).map((x) => [x.kind, x.scope, x.summary]))}`);
        expect(v).toMatchObject({ scope: 'guest', confidence: 'confident' });
        expect(v.summary).toMatch(/The guest rebooted at .*without a kernel panic/);
        expect(got.timeline.some((e) => e.plugin === 'libvirt' && e.event === 'rebooted')).toBe(true);
        // The agent, stopped by systemd on the way down, said the guest was shutting down; the
        // silence until the new boot's agent linked was planned, so vesperd told neither
        // heartbeat-lost nor agent-lost for it.
        const since = got.timeline.filter((e) => e.timeUs >= t0 && e.plugin === 'channel');
        const said = since.find((e) => e.event === 'agent-stopping');
        const stopLog = (
          await g.sshRun(
            "journalctl -b -1 -o short-monotonic --no-pager | grep -E 'vesper-agent.service|telling the host|stopping' | tail -8",
          )
        ).stdout;
        trail.push(`the agent on the way down: ${stopLog}`);
        expect(said?.payload, `the agent said it stopped; it logged: ${stopLog}`).toMatchObject({ agentStopping: { signal: 'SIGTERM' } });
        // systemd's 'stopping', or no state if PID 1 did not answer the agent in time (it sometimes
        // answers only once the agent has exited): then the guest going down soon after says it
        const state = (said!.payload['agentStopping'] as { systemState: string }).systemState;
        expect(['stopping', ''], `systemd's state; the agent logged: ${stopLog}`).toContain(state);
        expect(v.details?.['shutdownKnownBy']).toBe(state === 'stopping' ? 'systemd' : 'agent-stopped');
        expect(v.details?.['shutdownFromUs']).toBe(said!.timeUs);
        expect(since.filter((e) => e.event === 'heartbeat-lost' || e.event === 'agent-lost').map((e) => e.description)).toEqual([]);
        // what systemd (and root's user manager) stopped on the way down is planned; nothing is
        // called a crash, a kill, a hang or an agent fault
        const called = failuresSince(got, t0, [
          'app-crash',
          'app-killed',
          'agent-fault',
          'guest-hang',
          'guest-panic',
          'oom',
          'channel-loss',
        ]);
        expect(called.map((x) => [x.kind, x.summary])).toEqual([]);
        const text = await d.ok(at);
        expect(text).toContain('guest-stopped (guest, confident)');
        expect(text).toContain('The guest rebooted at');
      },
    );

    // Last: the panicked guest is destroyed by libvirt (<on_crash>destroy).
    it("a kernel panic (sysrq 'c' over ssh): libvirt's pvpanic event, guest-panic of the whole guest", { timeout: 300_000 }, async () => {
      // the ISA panic device (ACPI QEMU0001) is bound by pvpanic-mmio, loaded by udev
      expect((await g.sshRun('grep -q "^pvpanic_mmio " /proc/modules')).code, 'pvpanic_mmio loaded in the guest').toBe(0);
      const t0 = Date.now() * 1000;
      // a transient timer fires it a second after this command has returned
      await g.ssh("systemd-run --quiet --on-active=1 /bin/sh -c 'echo c > /proc/sysrq-trigger'");
      const { a, v } = await verdictFor('the panic', (x) => x.kind === 'guest-panic' && x.atUs >= t0, 120_000);
      expect(v).toMatchObject({ scope: 'guest', confidence: 'confident' });
      expect(v.summary).toMatch(/The guest kernel panicked at .*libvirt: Crashed Panicked/);
      expect(failuresSince(a, t0, ['agent-fault', 'guest-hang', 'channel-loss', 'guest-stopped'])).toEqual([]);
      await waitFor('the domain destroyed on the crash', async () => (await g.hv.state(g.name)).state === 'shut off', 60_000, 1000);
      const text = await d.ok(['analyze', g.name, '--last']);
      expect(text).toContain('guest-panic (guest, confident)');
      expect(text).toContain('The guest kernel panicked at');
    });
  });
}
