// Real Debian guests (test/rigs/distro), one per image, 1 vCPU, TCG unless KVM boots: the
// image's build time, boot to the agent's handshake, a real crash of a systemd service (its
// SIGUSR1 handler stores to address 0; systemd restarts it) to the host, an OOM kill inside a
// MemoryMax= service to the host, and the idle agent with all six probes. Guest times are put on
// the host's clock with the agent's ping answers (offset from the shortest round trip).
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { DistroGuest } from '../rigs/distro/rig.js';
import { readManifest, type Distro } from '../rigs/distro/image.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { loadAllProbes } from './agent-idle.js';
import { mono, pct, round, type Metrics } from './stats.js';

const round3 = (n: number): number => round(n, 3);

export const DISTRO_TARGETS: Record<string, string> = Object.fromEntries(
  (['debian12', 'debian13'] as const).flatMap((d) => [
    [`distro.${d}.boot_to_agent_s`, '<= 60'],
    [`distro.${d}.sigsegv_to_host_ms.p99`, '<= 20'],
    [`distro.${d}.oom_to_host_ms.p99`, '<= 100'],
    [`distro.${d}.agent_rss_mb`, '<= 64'],
    [`distro.${d}.agent_idle_cpu_pct`, '< 1'],
  ]),
);

export async function distroBench(
  m: Metrics,
  o: { distros: Distro[]; trials: number; idleS?: number; want: (p: string) => boolean; log: (s: string) => void },
): Promise<void> {
  for (const d of o.distros) if (o.want(`distro.${d}.`)) await oneDistro(m, d, o);
}

async function oneDistro(m: Metrics, d: Distro, o: { trials: number; idleS?: number; log: (s: string) => void }): Promise<void> {
  const p = `distro.${d}`;
  const g = new DistroGuest(d, { waitFor: 'agent', onProgress: (s, x) => o.log(`${p}: ${s}${x ? `: ${x}` : ''}`) });
  let client: AgentClient | undefined;
  try {
    await g.prepare();
    const man = await readManifest(g.image);
    m[`${p}.image_build_s`] = round(Number(man['buildSeconds']), 1);
    m[`${p}.image_build`] = g.image.cached ? `cached, built ${String(man['builtAt'])}` : 'built in this run';
    m[`${p}.kernel`] = g.image.kernelRelease;
    await g.boot();
    m[`${p}.accel`] = g.accel;
    // Boot to agent: a fresh start of the defined domain to the agent's handshake, measured on
    // a second boot so that the KVM probe (when it runs) is not counted.
    await g.hv.destroy(g.name);
    const t0 = mono();
    await g.hv.start(g.name);
    // Offering the host key enrols the agent (its unit pins the first host over the port): an
    // agent not enrolled runs no module (VSP_KEY_MISSING).
    client = await g.connectAgent(180_000, { hostKey: g.key });
    m[`${p}.boot_to_agent_s`] = round3((mono() - t0) / 1e9);
    await g.waitSsh(120_000);

    const recs: AgentRecord[] = [];
    const seenAt = new Map<number, number>();
    client.on('record', (r) => {
      seenAt.set(r.seq, mono());
      recs.push(r);
    });
    await client.load(g.module('signal'));
    await client.load(g.module('oom'));
    const toHost = (r: AgentRecord, offset: number): number => (seenAt.get(r.seq)! - (r.monoNs - offset)) / 1e6;
    const crashes = (): AgentRecord[] =>
      recs.filter((x) => x.kind === 'signal' && x.raw.signal?.sig === 11 && x.raw.signal?.target?.comm === 'vesper-crashy');

    // Crashes in batches of 25, driven by one shell loop in the guest (0.4 s apart: systemd
    // restarts the service after 100 ms), the clock offset measured again before each batch.
    const segv: number[] = [];
    for (let batch = 0; segv.length < o.trials && batch < Math.ceil(o.trials / 25) + 4; batch++) {
      const { offsetNs } = await client.clockOffset(20);
      const before = crashes().length;
      await g.ssh(
        `for i in $(seq 25); do p=$(systemctl show -P MainPID vesper-crashy.service); [ "$p" -gt 0 ] && kill -USR1 "$p"; sleep 0.4; done`,
        180_000,
      );
      await waitFor('the batch told', () => crashes().length >= before + 25, 10_000, 10).catch(() => undefined);
      for (const r of crashes().slice(before)) segv.push(toHost(r, offsetNs));
      o.log(`${p}: ${segv.length} crashes seen at the host`);
    }
    m[`${p}.sigsegv_to_host_ms.p50`] = round3(pct(segv, 50));
    m[`${p}.sigsegv_to_host_ms.p99`] = round3(pct(segv, 99));
    m[`${p}.sigsegv_trials`] = segv.length;

    const oom: number[] = [];
    for (let i = 0; i < 10; i++) {
      const { offsetNs } = await client.clockOffset(20);
      const before = recs.filter((x) => x.kind === 'oom').length;
      await g.ssh('systemctl start vesper-memhog.service');
      const r = await waitFor('OOM', () => recs.filter((x) => x.kind === 'oom')[before], 60_000, 5);
      oom.push(toHost(r, offsetNs));
      await sleep(500);
    }
    m[`${p}.oom_to_host_ms.p50`] = round3(pct(oom, 50));
    m[`${p}.oom_to_host_ms.p99`] = round3(pct(oom, 99));
    m[`${p}.oom_trials`] = oom.length;

    // The idle agent with all six probes, read from its own /proc in the guest over ssh (the
    // shell there costs the agent nothing).
    await client.unload('signal');
    await client.unload('oom');
    const skipped = await loadAllProbes(client, (n) => g.module(n));
    m[`${p}.idle_probes`] = skipped.length ? `six but ${skipped.join('; ')}` : 'all six';
    await sleep(3000);
    const pid = client.hello.agentPid;
    const sample = async (): Promise<{ ticks: number; up: number; rssKb: number; hz: number }> => {
      const out = await g.ssh(
        `cut -d' ' -f14,15 /proc/${pid}/stat; cut -d' ' -f1 /proc/uptime; grep VmRSS /proc/${pid}/status; getconf CLK_TCK`,
      );
      const [ut, up, rss, hz] = out.trim().split('\n');
      const [u, s] = ut!.split(' ').map(Number);
      return { ticks: u! + s!, up: Number(up), rssKb: Number(/(\d+)/.exec(rss!)?.[1]), hz: Number(hz) };
    };
    const a = await sample();
    await sleep((o.idleS ?? 60) * 1000);
    const b = await sample();
    m[`${p}.agent_idle_cpu_pct`] = round3((100 * ((b.ticks - a.ticks) / a.hz)) / (b.up - a.up));
    m[`${p}.agent_rss_mb`] = round(b.rssKb / 1024, 1);
  } finally {
    client?.close();
    await g.destroy();
  }
}
