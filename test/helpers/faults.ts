// Faults at the worst moment (issue 8): a real guest streams records to a real vesperd, and in
// the middle of the stream one thing breaks — vesperd SIGKILLed, the guest's agent SIGKILLed,
// libvirtd restarted, the channel hot-unplugged and plugged back (its socket removed and made
// again), the guest rebooted. Nobody helps vesperd afterwards: the trial waits for it to link
// to the agent again by itself, with its probes loaded. The store is then checked whole:
// every (run, seq) at most once, and every sequence number of every run either stored or
// inside a loss vesperd reported (an agent's crash is reported with its count, from what the
// next agent says its predecessor numbered).
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from './project-root.js';
import { VmRig } from '../rigs/vm/rig.js';
import { openStoreForSql } from './store-sql.js';
import { USR1_STORM_PROBE, VesperdProcess, writeVesperdConfig } from './vesperd-process.js';
import { sleep, waitFor } from './wait.js';

export const FAULT_KINDS = [
  'vesperd-kill',
  'agent-kill',
  'agent-kill-unlinked',
  'libvirtd-restart',
  'channel-replug',
  'guest-reboot',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultTrial {
  kind: FaultKind;
  /** ms into the storm when the fault hit */
  atMs: number;
  /** ms from the fault until vesperd had the agent linked again with its probes loaded */
  recoveredMs: number;
  /** the storm's target process in the guest (its records carry it), when the storm answered */
  targetPid: number | null;
  /** records the storm asked for */
  records: number;
}

export interface StoreCheck {
  runs: number;
  records: number;
  /** (run, seq) stored more than once */
  duplicates: number;
  /** sequence numbers neither stored nor inside a reported loss: acknowledged records lost */
  unexplained: number;
  /** records reported lost because the agent run that numbered them ended first */
  reportedLost: number;
  /** agent runs that a later agent said ended (from the agent-connected events) */
  endedRunsTold: number;
  /** of those, the ones whose loss report is missing or wrong */
  endedRunsMisreported: number;
}

interface Ended {
  bootId: string;
  agentPid: number;
  lastSeq: number;
}

export class FaultRig {
  rig!: VmRig;
  vesperd!: VesperdProcess;
  readonly dir: string;
  readonly storePath: string;
  private readonly say: (s: string) => void;

  private constructor(say: (s: string) => void) {
    this.say = say;
    this.dir = mkdtempSync('/tmp/vesper-faults-');
    chmodSync(this.dir, 0o755);
    this.storePath = join(this.dir, 'events.db');
  }

  static async start(say: (s: string) => void = () => undefined): Promise<FaultRig> {
    const f = new FaultRig(say);
    try {
      await f.setUp();
      return f;
    } catch (err) {
      await f.stop();
      throw err;
    }
  }

  private async setUp(): Promise<void> {
    this.rig = new VmRig({ testHelpers: true, onProgress: (s, d) => this.say(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    await this.rig.prepare();
    (await this.rig.boot()).close(); // vesperd keeps the link from now on
    const socket = join(this.dir, 'run', 'vesperd.sock');
    mkdirSync(join(this.dir, 'fence'));
    const configPath = writeVesperdConfig(join(this.dir, 'vesper.yaml'), {
      socket,
      store: this.storePath,
      domains: [this.rig.name],
      fenceLockDir: join(this.dir, 'fence'),
    });
    this.vesperd = new VesperdProcess(configPath, socket);
    await this.vesperd.start();
    await this.waitLinked(60_000);
    await this.vesperd.ok(['attach', this.rig.name, ...USR1_STORM_PROBE]);
    await this.waitLinked(60_000);
  }

  private lastStatus = '';

  /** vesperd has the agent linked and every attached probe loaded in it. */
  private async linked(): Promise<boolean> {
    const r = await this.vesperd.cli(['status', this.rig.name, '-o', 'json'], 10_000);
    this.lastStatus = r.code === 0 ? r.stdout : `exit ${r.code}: ${r.stderr}`;
    if (r.code !== 0) return false;
    const s = JSON.parse(r.stdout) as { link: string; attached: Array<{ loaded: boolean }> };
    return s.link === 'connected' && s.attached.every((p) => p.loaded);
  }

  async waitLinked(budgetMs: number): Promise<void> {
    await waitFor('vesperd linked to the agent with its probes loaded', () => this.linked(), budgetMs, 250).catch((err: Error) => {
      throw new Error(`${err.message}\nlast status: ${this.lastStatus}\nvesperd log (tail):\n${this.vesperd.log.slice(-3000)}`);
    });
  }

  /** status fields that tell a new agent run (agentPid) or a new boot (bootId) */
  private async identity(): Promise<{ agentPid: number | null; bootId: string | null }> {
    const r = await this.vesperd.cli(['status', this.rig.name, '-o', 'json'], 10_000);
    if (r.code !== 0) return { agentPid: null, bootId: null };
    const s = JSON.parse(r.stdout) as { agentPid: number | null; bootId: string | null };
    return { agentPid: s.agentPid, bootId: s.bootId };
  }

  /**
   * One trial: a storm of `records` signal records at `rate`/s in the guest (running on its
   * own, so the helper is free to inject), the fault `atMs` into it, then the wait for vesperd
   * to recover by itself (for an agent kill, with the new agent; for a reboot, the new boot)
   * and for the storm to end.
   */
  async trial(kind: FaultKind, o: { records: number; rate: number; atMs: number; recoverBudgetMs?: number }): Promise<FaultTrial> {
    const before = await this.identity();
    const started = await this.rig.fault(`sigstorm-bg ${o.records} ${o.rate}`);
    const targetPid = Number(started.trim().split(/\s+/).at(-1)); // ok sigstorm-bg PID
    await sleep(o.atMs);
    this.say(`fault: ${kind} ${o.atMs} ms into a storm of ${o.records} at ${o.rate}/s`);
    const t0 = Date.now();
    await this.inject(kind);
    const budget = o.recoverBudgetMs ?? 240_000;
    if (kind === 'agent-kill' || kind === 'agent-kill-unlinked' || kind === 'guest-reboot') {
      const field = kind === 'guest-reboot' ? 'bootId' : 'agentPid';
      await waitFor(
        `a new ${field} in vesperd's status`,
        async () => {
          const now = (await this.identity())[field];
          return now !== null && now !== before[field];
        },
        budget,
        250,
      );
    }
    await this.waitLinked(budget);
    const recoveredMs = Date.now() - t0;
    let answer = '';
    if (kind !== 'guest-reboot') {
      // the storm ends on its own schedule; a reboot ends it
      const until = Date.now() + (2000 * o.records) / o.rate + 60_000;
      while (Date.now() < until) {
        answer = await this.rig.fault(`sigstorm-done ${targetPid}`).catch((e: Error) => e.message);
        if (answer.startsWith('ok')) break;
        await sleep(500);
      }
      if (!answer.startsWith('ok')) throw new Error(`the storm did not end: ${answer}`);
    }
    this.say(`fault: ${kind}: recovered in ${recoveredMs} ms; storm: ${answer || 'cut by the reboot'}`);
    return { kind, atMs: o.atMs, recoveredMs, targetPid: kind === 'guest-reboot' ? null : targetPid, records: o.records };
  }

  private async inject(kind: FaultKind): Promise<void> {
    switch (kind) {
      case 'vesperd-kill':
        await this.vesperd.stop('SIGKILL');
        await sleep(500 + Math.floor(Math.random() * 1500));
        await this.vesperd.start();
        return;
      case 'agent-kill':
        await this.rig.fault('kill-agent'); // the guest's init starts it again a second later
        return;
      case 'agent-kill-unlinked':
        // vesperd gone while the agent numbers records into its ring, then the agent killed:
        // what it numbered since vesperd left is lost, and must be reported with its count
        await this.vesperd.stop('SIGKILL');
        await sleep(1000);
        await this.rig.fault('kill-agent');
        await sleep(1500);
        await this.vesperd.start();
        return;
      case 'libvirtd-restart': {
        const pid = spawnSync('pgrep', ['-x', '-o', 'libvirtd'], { encoding: 'utf8' }).stdout.trim();
        if (pid) process.kill(Number(pid), 'SIGTERM');
        // running guests outlive libvirtd; the new one takes them back over
        await waitFor('libvirtd gone', () => spawnSync('pgrep', ['-x', 'libvirtd']).status !== 0, 30_000, 100);
        execFileSync('bash', [join(projectRoot(), 'scripts/host-setup.sh'), 'start'], {
          stdio: ['ignore', 'ignore', 'inherit'],
          timeout: 120_000,
        });
        return;
      }
      case 'channel-replug':
        await this.rig.deactivate();
        await sleep(300 + Math.floor(Math.random() * 700));
        await this.rig.activate();
        return;
      case 'guest-reboot':
        await this.rig.fault('reboot').catch(() => undefined); // the answer may be cut off by the reboot
        return;
    }
  }

  /** Signal records stored for one storm's target process. */
  storedFor(targetPid: number, budgetMs = 60_000): Promise<number> {
    const count = (): number => {
      const db = openStoreForSql(this.storePath);
      try {
        return (
          db
            .prepare(
              "SELECT count(*) AS n FROM events WHERE vm = ? AND plugin = 'signal' AND json_extract(payload_json(payload), '$.signal.target.pid') = ?",
            )
            .get(this.rig.name, targetPid) as { n: number }
        ).n;
      } finally {
        db.close();
      }
    };
    // Records still in flight when the storm answered arrive within a moment; wait for the
    // count to stop growing.
    return (async () => {
      let last = -1;
      const until = Date.now() + budgetMs;
      for (;;) {
        const n = count();
        if (n === last || Date.now() > until) return n;
        last = n;
        await sleep(1000);
      }
    })();
  }

  /** The whole store checked: duplicates, holes, and what ended agent runs were said to lose. */
  checkStore(): StoreCheck {
    const db = openStoreForSql(this.storePath);
    try {
      const vm = this.rig.name;
      const rows = db
        .prepare('SELECT agent_run AS run, seq FROM events WHERE vm = ? AND agent_run IS NOT NULL ORDER BY agent_run, seq')
        .all(vm) as Array<{
        run: string;
        seq: number;
      }>;
      const ended = db
        .prepare(
          "SELECT agent_run AS run, json_extract(payload_json(payload), '$.loss.firstSeq') AS first, json_extract(payload_json(payload), '$.loss.lastSeq') AS last, json_extract(payload_json(payload), '$.loss.count') AS count FROM events WHERE vm = ? AND plugin = 'channel' AND event = 'records-lost' AND json_extract(payload_json(payload), '$.loss.source') = 'AGENT_ENDED'",
        )
        .all(vm) as Array<{ run: string; first: number; last: number; count: number }>;
      const told = db
        .prepare("SELECT payload_json(payload) AS p FROM events WHERE vm = ? AND plugin = 'channel' AND event = 'agent-connected'")
        .all(vm) as Array<{ p: string }>;
      const byRun = new Map<string, number[]>();
      for (const r of rows) {
        let a = byRun.get(r.run);
        if (!a) byRun.set(r.run, (a = []));
        a.push(r.seq);
      }
      let duplicates = 0;
      let unexplained = 0;
      for (const [run, seqs] of byRun) {
        const covered = ended.filter((e) => e.run === run);
        let prev = 0;
        for (const s of seqs) {
          if (s === prev) {
            duplicates++;
            continue;
          }
          for (let q = prev + 1; q < s; q++) if (!covered.some((c) => q >= c.first && q <= c.last)) unexplained++;
          prev = s;
        }
      }
      // What each new agent said its predecessors numbered, against what the store holds of them.
      const endedSaid = new Map<string, number>();
      for (const t of told) {
        const p = JSON.parse(t.p) as { endedRuns?: Ended[] };
        for (const e of p.endedRuns ?? []) endedSaid.set(`${e.bootId}/${e.agentPid}`, e.lastSeq);
      }
      let misreported = 0;
      for (const [run, last] of endedSaid) {
        const seqs = byRun.get(run) ?? [];
        const top = seqs.at(-1) ?? 0;
        if (top !== last) misreported++; // the report sits at the run's last seq: the top must be it
        const rep = ended.find((e) => e.run === run);
        if (rep && rep.count !== rep.last - rep.first + 1) misreported++;
      }
      return {
        runs: byRun.size,
        records: rows.length,
        duplicates,
        unexplained,
        reportedLost: ended.reduce((n, e) => n + e.count, 0),
        endedRunsTold: endedSaid.size,
        endedRunsMisreported: misreported,
      };
    } finally {
      db.close();
    }
  }

  async stop(): Promise<void> {
    await this.vesperd?.killAll();
    if (this.rig) await this.rig.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
