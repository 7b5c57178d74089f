// Split brain, for real: two vesperd processes watch the same libvirt and share one fence-lock
// directory, as two managers that suspect the same VM would. A filter on both turns the VM's
// `suspended` lifecycle event into `failover` to a standby name, so one `virsh suspend` makes
// both decide to fail it over at the same moment. libvirt's own event stream, watched by a
// third party (this harness), is the judge: per trial, the standby may start only once, only
// after the primary stopped, and never while the primary still exists.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LibvirtEvents, type LibvirtEvent } from '../../host/libvirt/events.js';
import { UnraidHypervisor } from '../../host/libvirt/unraid.js';
import { projectRoot } from './project-root.js';
import { VesperdProcess, writeVesperdConfig, type EventLine } from './vesperd-process.js';
import { sleep, waitFor } from './wait.js';

export interface SplitBrainTrial {
  /** managers whose failover reported done */
  done: number;
  /** the error codes of those whose failover failed */
  failedCodes: string[];
  /** their messages, in the same order */
  failedMessages: string[];
  /** the standby started while the primary was still there (running or paused) */
  doubleStart: boolean;
  /** the standby started before libvirt reported the primary stopped */
  startBeforeFence: boolean;
  /** how many times the standby started in this trial */
  standbyStarts: number;
  /** suspend to standby started (ms), by libvirt's clock */
  failoverMs: number;
}

export interface SplitBrainResult {
  trials: SplitBrainTrial[];
  doubleStarts: number;
  startsBeforeFence: number;
}

/** Why a real libvirtd cannot be had here, or '' once it answers (host-setup is idempotent). */
export function whyNoLibvirtd(): string {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'needs an x86-64 Linux host';
  if (process.getuid?.() !== 0) return 'needs root (starts libvirtd and domains)';
  const r = spawnSync('bash', [join(projectRoot(), 'scripts/host-setup.sh'), 'start'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status === 100) return `the libvirt/QEMU Debian packages could not be installed: ${r.stderr.trim().split('\n').pop()}`;
  if (r.status !== 0) return `scripts/host-setup.sh failed (${r.status ?? r.signal}): ${r.stderr.trim().split('\n').pop()}`;
  return '';
}

/** A domain that needs no image: QEMU (TCG) runs SeaBIOS, finds nothing to boot, and waits. */
function tinyDomainXml(name: string): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><video><model type='none'/></video><memballoon model='none'/></devices>
</domain>`;
}

function managerConfig(dir: string, name: string, fenceDir: string, domains: string[]): string {
  return writeVesperdConfig(join(dir, `${name}.yaml`), {
    socket: join(dir, `${name}.sock`),
    store: join(dir, `${name}.db`),
    domains,
    fenceLockDir: fenceDir,
    // one failover per trial on the same VM: the crash-loop limit must not be what stops it.
    // One libvirtd and a diskless domain: nothing for a lock manager to guard, so this tests the
    // fence lease and the ordering only (failover-lockd.test.ts has the lock manager).
    more: { actions: { rate_limit: { max: 100000, per: '1s' }, require_lock_manager: false } },
  });
}

export async function runSplitBrain(o: { trials: number; log?: (s: string) => void }): Promise<SplitBrainResult> {
  const log = o.log ?? (() => undefined);
  const tag = randomBytes(3).toString('hex');
  const primary = `vsp-sb-${tag}`;
  const standby = `vsp-sb-${tag}-standby`;
  const dir = mkdtempSync('/tmp/vesper-sb-');
  const fenceDir = join(dir, 'fence');
  const hv = new UnraidHypervisor();
  const events = new LibvirtEvents();
  const seen: LibvirtEvent[] = [];
  events.on('event', (e) => {
    if (e.kind === 'lifecycle' && (e.domain === primary || e.domain === standby)) seen.push(e);
  });
  const managers = ['a', 'b'].map((n) => new VesperdProcess(managerConfig(dir, n, fenceDir, [primary, standby]), join(dir, `${n}.sock`)));
  const results: SplitBrainTrial[] = [];
  const follows: { lines: EventLine[]; stop: () => void }[] = [];
  try {
    await hv.define(tinyDomainXml(primary));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('virsh event did not get ready within 30 s')), 30_000);
      events.once('ready', () => {
        clearTimeout(t);
        resolve();
      });
      events.start();
    });
    await Promise.all(managers.map((m) => m.start()));
    for (const m of managers) {
      await m.ok([
        'filter',
        'set',
        '--vm',
        primary,
        'libvirt',
        '*',
        'suspended',
        'action',
        'failover',
        '--standby-uri',
        'qemu:///system',
        '--standby-name',
        standby,
      ]);
      follows.push(m.follow(['--vm', primary, '--plugin', 'action']));
    }
    for (let i = 0; i < o.trials; i++) {
      const from = seen.length;
      const actionsFrom = follows.map((f) => f.lines.length);
      await hv.start(primary);
      await waitFor('the primary started', () => seen.slice(from).some((e) => e.domain === primary && e.event === 'Started'), 30_000, 20);
      // Both managers must have the domain's start before the suspend: their libvirt event
      // streams are separate processes.
      await sleep(200);
      const t0 = seen.length;
      spawnSync('virsh', ['-c', 'qemu:///system', 'suspend', primary], { stdio: 'ignore', timeout: 30_000 });
      await waitFor(
        'both managers reported their failover',
        () => follows.every((f, k) => f.lines.slice(actionsFrom[k]).some((l) => l.event === 'done' || l.event === 'failed')),
        120_000,
        20,
      );
      // A late second start would show up here.
      await sleep(300);
      const trial = judge(seen.slice(t0), primary, standby);
      for (let k = 0; k < follows.length; k++)
        for (const l of follows[k]!.lines.slice(actionsFrom[k]))
          if (l.event === 'done') trial.done++;
          else if (l.event === 'failed') {
            const e = l.payload?.['error'] as { code?: string; message?: string } | null;
            trial.failedCodes.push(String(e?.code ?? '?'));
            trial.failedMessages.push(String(e?.message ?? ''));
          }
      results.push(trial);
      log(
        `split brain trial ${i + 1}/${o.trials}: ${trial.done} done, failed ${trial.failedCodes.join(',') || '-'}, standby starts ${trial.standbyStarts}` +
          `${trial.doubleStart ? ', DOUBLE START' : ''}${trial.startBeforeFence ? ', START BEFORE FENCE' : ''}, ${trial.failoverMs} ms` +
          (trial.done === 1 ? '' : ` (${trial.failedMessages.join(' | ')})`),
      );
      // The next trial starts from the primary alone.
      for (const name of [standby, primary]) {
        const st = await hv.state(name).catch(() => null);
        if (st && st.state !== 'shut off') await hv.destroy(name).catch(() => undefined);
      }
      await hv.undefine(standby).catch(() => undefined);
      // Gone for sure before the next trial defines it again.
      await waitFor(
        'the standby undefined',
        () =>
          hv.state(standby).then(
            () => false,
            () => true,
          ),
        30_000,
        100,
      );
    }
  } finally {
    for (const f of follows) f.stop();
    for (const m of managers) await m.killAll();
    for (const name of [standby, primary]) {
      await hv.destroy(name).catch(() => undefined);
      await hv.undefine(name).catch(() => undefined);
    }
    await events.stop();
    await hv.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    trials: results,
    doubleStarts: results.filter((t) => t.doubleStart || t.standbyStarts > 1).length,
    startsBeforeFence: results.filter((t) => t.startBeforeFence).length,
  };
}

/** Replays libvirt's lifecycle events of one trial, in libvirt's order. */
export function judge(evs: LibvirtEvent[], primary: string, standby: string): SplitBrainTrial {
  let primaryThere = true; // started and suspended: it still holds the VM's disks
  let standbyThere = false;
  let primaryStopped = false;
  const t: SplitBrainTrial = {
    done: 0,
    failedCodes: [],
    failedMessages: [],
    doubleStart: false,
    startBeforeFence: false,
    standbyStarts: 0,
    failoverMs: -1,
  };
  const t0 = evs[0]?.at.getTime() ?? 0;
  for (const e of evs) {
    if (e.domain === primary) {
      if (e.event === 'Stopped') {
        primaryThere = false;
        primaryStopped = true;
      } else if (e.event === 'Started') primaryThere = true;
    } else if (e.domain === standby) {
      if (e.event === 'Started') {
        t.standbyStarts++;
        if (primaryThere || standbyThere) t.doubleStart = true;
        if (!primaryStopped) t.startBeforeFence = true;
        standbyThere = true;
        if (t.failoverMs < 0) t.failoverMs = e.at.getTime() - t0;
      } else if (e.event === 'Stopped') standbyThere = false;
    }
  }
  return t;
}
