// The hostile-guest harness: a real vesperd (its own process, from source) manages VMs that a
// libvirt test-driver node file defines, so it finds their channel sockets exactly as it finds
// a real guest's. Behind some of those sockets sit well-behaved simulated agents (a child
// process, test/bench/sim-agents.ts) whose event latency is measured through `vesper events -f`;
// behind the others, hostile agents that this process drives with fast-check cases
// (hostile-cases.ts). Afterwards: did vesperd stay up, did the good guests stay linked and
// fast, how much memory did vesperd take per hostile link, how many log lines a second did
// each VM cost, and does the store hold anything of a hostile guest under another VM's name,
// or a record twice.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import fc from 'fast-check';
import { projectRoot } from '../helpers/project-root.js';
import { openStoreForSql } from '../helpers/store-sql.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { HOSTILE_MARK, caseWrites, helloFrame, hostileCaseArb, type HostileCase, type LinkState } from './hostile-cases.js';

const ROOT = projectRoot();
const CLI = join(ROOT, 'host/cli/vesper.ts');
const SIM = join(ROOT, 'test/bench/sim-agents.ts');

export interface FuzzOptions {
  cases: number;
  hostile: number;
  good: number;
  /** events a second from each good guest */
  goodRate: number;
  /** seconds of the good guests alone, before the hostile ones start */
  baselineS: number;
  seed?: number;
  log?: (s: string) => void;
  /** hostile and quiet windows alternate this often (ms, default 1000) */
  windowMs?: number;
  /** only these case kinds (all when absent) */
  kinds?: string[];
  /** vesperd's whole log is copied here when set */
  logFile?: string;
}

export interface FuzzResult {
  cases: number;
  seed: number;
  /** fast-check's report when a property failed ('' if none) */
  failure: string;
  hostCrashes: number;
  /** vesperd's exits and the last lines it wrote before each */
  crashLogs: string[];
  /** the good guests' event latency without hostile traffic (alone first, then every other second) */
  goodP99BaselineMs: number;
  /** and while the hostile guests send */
  goodP99HostileMs: number;
  goodP50BaselineMs: number;
  goodP50HostileMs: number;
  goodEventsBaseline: number;
  goodEventsHostile: number;
  /** the good guests' links that dropped while the hostile ones ran */
  goodDisconnects: number;
  baselineRssMb: number;
  maxRssMb: number;
  maxSessionRssMb: number;
  /** the most log lines vesperd wrote about one VM in one second, and which */
  maxLogLinesPerVmSecond: number;
  maxLogVm: string;
  logLines: number;
  /** warn/error lines with no VM named */
  logLinesWithoutVm: number;
  /** rejection codes logged per hostile VM */
  codesLogged: Record<string, string[]>;
  /** rows under a good VM that came from a hostile guest (its mark, or a run that is not the good guest's) */
  foreignRows: number;
  /** rows stored twice (same vm, agent run and seq) */
  duplicateRows: number;
  /** rows of host plugins (libvirt, channel, action) that a guest's records claimed */
  forgedHostRows: number;
  hostileRows: number;
  /** the hostile guests' events `vesper events -o json` printed (-1: it failed) */
  hostileEventsRead: number;
  hostileConnections: number;
  wallS: number;
}

/** One domain of the libvirt test driver's node file, with the agent channel on `sock`. */
function domainXml(name: string, sock: string): string {
  return `  <domain type='test'>
    <name>${name}</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <channel type='unix'>
        <source mode='bind' path='${sock}'/>
        <target type='virtio' name='org.vesper.agent.0'/>
      </channel>
    </devices>
  </domain>`;
}

const rssMb = (pid: number): number => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
};

function pct(values: number[], p: number): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

/** A hostile agent: listens where the VM's channel is, takes every link vesperd opens, and runs cases on the current one. */
class HostileAgent {
  private server: Server | null = null;
  sock: Socket | null = null;
  connections = 0;
  readonly state: LinkState;

  constructor(
    readonly vm: string,
    readonly path: string,
    others: string[],
    otherRuns: Array<{ bootId: string; pid: number }>,
  ) {
    this.state = { vm, others, otherRuns, seq: 0 };
  }

  listen(): Promise<void> {
    this.server = createServer((s) => {
      this.sock?.destroy();
      this.sock = s;
      this.connections++;
      s.on('error', () => undefined);
      s.on('data', () => undefined); // read and drop what the host says (unless a case pauses)
      s.on('close', () => {
        if (this.sock === s) this.sock = null;
      });
      // every link opens with a hello of its own, so that cases run on a link past its handshake
      this.state.seq = 0;
      s.write(helloFrame(null, this.state));
    });
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.path, () => resolve());
    });
  }

  get live(): boolean {
    return this.sock !== null && !this.sock.destroyed;
  }

  /** Runs one case on the current link; resolves once its bytes are written (or the link is gone). */
  async run(c: HostileCase): Promise<void> {
    const s = this.sock;
    if (!s || s.destroyed) return;
    const w = caseWrites(c, this.state);
    if (w.pauseReadMs) s.pause();
    for (const b of w.writes) {
      if (s.destroyed) return;
      if (!s.write(b)) {
        // vesperd reads as it can: wait for it, but not forever (that would itself be a finding)
        let done: () => void = () => undefined;
        const t = setTimeout(() => done(), 10_000);
        await new Promise<void>((r) => {
          done = r;
          s.once('drain', r).once('close', r);
        });
        clearTimeout(t);
        s.off('drain', done).off('close', done);
      }
    }
    if (w.pauseReadMs) {
      await sleep(w.pauseReadMs);
      s.resume();
    }
    if (w.close) s.destroy();
  }

  close(): void {
    this.sock?.destroy();
    this.server?.close();
  }
}

interface LogLine {
  level: number;
  time: number;
  vm?: string;
  code?: string;
  msg?: string;
}

/** vesperd from source in its own process, its log parsed as it comes. */
class Daemon {
  proc: ChildProcess | null = null;
  exits: string[] = [];
  tail: string[] = [];
  readonly lines: LogLine[] = [];
  stopping = false;

  constructor(
    private readonly configPath: string,
    private readonly keyDir: string,
  ) {}

  start(): void {
    // FUZZ_VESPERD_NODE_ARGS: node options for vesperd alone (e.g. `--cpu-prof --cpu-prof-dir=DIR`, `--trace-gc`);
    // FUZZ_VESPERD_STDOUT: a file for what it writes to stdout (--trace-gc does)
    const nodeArgs = (process.env['FUZZ_VESPERD_NODE_ARGS'] ?? '').split(' ').filter(Boolean);
    const p = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', CLI, 'daemon', '--config', this.configPath], {
      cwd: ROOT,
      stdio: ['ignore', process.env['FUZZ_VESPERD_STDOUT'] ? openSync(process.env['FUZZ_VESPERD_STDOUT'], 'w') : 'ignore', 'pipe'],
      env: { ...process.env, VESPER_KEY_DIR: this.keyDir },
    });
    this.proc = p;
    createInterface({ input: p.stderr! }).on('line', (l) => {
      this.tail.push(l);
      if (this.tail.length > 20) this.tail.shift();
      try {
        this.lines.push(JSON.parse(l) as LogLine);
      } catch {
        this.lines.push({ level: 60, time: Date.now(), msg: l });
      }
    });
    p.once('exit', (code, sig) => {
      if (!this.stopping) this.exits.push(`vesperd exited (${code ?? sig}):\n${this.tail.join('\n')}`);
    });
  }

  get alive(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const p = this.proc;
    if (!p || !this.alive) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await Promise.race([gone, sleep(15_000)]);
    if (this.alive) p.kill('SIGKILL');
  }
}

/** `vesper events -f` on the good guests' signal records: the latency of each as it arrives. */
function follow(socket: string, onEvent: (vm: string, sentMs: number, latencyMs: number) => void): ChildProcess {
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, '--socket', socket, 'events', '-f', '-o', 'json', '--plugin', 'signal'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  createInterface({ input: p.stdout }).on('line', (l) => {
    const now = Date.now() * 1000;
    try {
      const e = JSON.parse(l) as { vm: string; guestTimeUs: number | null };
      if (e.guestTimeUs) onEvent(e.vm, e.guestTimeUs / 1000, (now - e.guestTimeUs) / 1000);
    } catch {
      // not ours to judge here
    }
  });
  return p;
}

function runCli(socket: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', CLI, '--socket', socket, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? 1, out });
    });
  });
}

export async function runHostileFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const log = o.log ?? (() => undefined);
  const seed = o.seed ?? Date.now() % 2 ** 31;
  const dir = mkdtempSync(join(tmpdir(), 'vesper-fuzz-'));
  const goodDir = join(dir, 'good');
  const badDir = join(dir, 'bad');
  mkdirSync(goodDir);
  mkdirSync(badDir);
  const goodVms = Array.from({ length: o.good }, (_, i) => `good-${i}`);
  const badVms = Array.from({ length: o.hostile }, (_, i) => `bad-${i}`);
  const socket = join(dir, 'vesperd.sock');
  const storePath = join(dir, 'events.db');
  const nodeXml = join(dir, 'node.xml');
  writeFileSync(
    nodeXml,
    `<node>\n${[...goodVms.map((v, i) => domainXml(v, join(goodDir, `a${i}.sock`))), ...badVms.map((v, i) => domainXml(v, join(badDir, `h${i}.sock`)))].join('\n')}\n</node>\n`,
  );
  const config = join(dir, 'vesper.yaml');
  writeFileSync(
    config,
    [
      'daemon:',
      `  socket: ${socket}`,
      '  group: root',
      '  log_level: info',
      'libvirt:',
      `  uri: test://${nodeXml}`,
      'store:',
      `  path: ${storePath}`,
      '  sync: normal',
      'channel:',
      '  keepalive: 1s',
      '  reconnect_min: 200ms',
      '  reconnect_max: 1s',
      'actions:',
      `  fence_lock_dir: ${join(dir, 'fence')}`,
      // a probe attached to the hostile VMs: each hello that does not list it makes vesperd push it
      'attach:',
      ...badVms.flatMap((v) => [`  - vm: ${v}`, '    probes:', '      - name: heartbeat', '        params: { interval_ms: "1000" }']),
      '',
    ].join('\n'),
  );

  const hostile = badVms.map(
    (v, i) =>
      new HostileAgent(
        v,
        join(badDir, `h${i}.sock`),
        goodVms,
        goodVms.map((_, g) => ({ bootId: `sim-${g}`, pid: g + 1 })),
      ),
  );
  const daemon = new Daemon(config, join(dir, 'keys'));
  let sims: ChildProcess | null = null;
  let follower: ChildProcess | null = null;
  const t0 = Date.now();
  let phase: 'settle' | 'baseline' | 'hostile' | 'done' = 'settle';
  const lat = { baseline: [] as number[], hostile: [] as number[] };
  let rssTimer: NodeJS.Timeout | null = null;
  let maxRss = 0;
  let baselineRss = 0;
  let failure = '';
  let casesRun = 0;
  let goodDisconnects = 0;
  let failed = false;
  let hostileEventsRead = -1;
  try {
    sims = fork(SIM, [goodDir, String(o.good), String(o.goodRate)], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    await new Promise<void>((resolve, reject) => {
      sims!.once('message', () => resolve());
      sims!.once('exit', (c) => reject(new Error(`simulated agents exited: ${c}`)));
    });
    for (const h of hostile) await h.listen();
    daemon.start();
    await waitFor(
      'vesperd answers',
      async () => daemon.exits.length > 0 || (await runCli(socket, ['list', '-o', 'json'])).code === 0,
      60_000,
      300,
    );
    if (daemon.exits.length) throw new Error(daemon.exits.join('\n'));
    const goodLinked = async (): Promise<boolean> => {
      const r = await runCli(socket, ['list', '-o', 'json']);
      if (r.code !== 0) return false;
      const vms = JSON.parse(r.out) as Array<{ name: string; link: string }>;
      return goodVms.every((g) => vms.find((v) => v.name === g)?.link === 'connected');
    };
    await waitFor('the good guests linked', goodLinked, 60_000, 300);
    // Side by side: while the hostile guests run, they are quiet every other second. Each good
    // event counts for the kind of window it was sent in; in the first 200 ms of a window the
    // other kind's backlog may still show, so those count for neither.
    let hostileOn = false;
    const windows: Array<{ at: number; hostile: boolean | null }> = [];
    const samples: Array<[number, number]> = [];
    follower = follow(socket, (vm, sentMs, ms) => {
      if (vm.startsWith('good-')) samples.push([sentMs, ms]);
    });
    rssTimer = setInterval(() => {
      const r = rssMb(daemon.proc?.pid ?? 0);
      if (phase === 'hostile' && r > maxRss) maxRss = r;
    }, 200);
    await waitFor('the follower telling good events', () => samples.length > 0, 60_000, 50);
    await sleep(1000); // the links settle
    log(`fuzz: ${o.good} good guests alone for ${o.baselineS} s`);
    phase = 'baseline';
    windows.push({ at: Date.now(), hostile: false });
    await sleep(o.baselineS * 1000);
    baselineRss = rssMb(daemon.proc!.pid!);
    maxRss = baselineRss;
    const connectedLines = (): number => daemon.lines.filter((l) => l.vm?.startsWith('good-') && l.msg === 'agent link lost').length;
    const lost0 = connectedLines();
    log(`fuzz: ${o.cases} hostile cases on ${o.hostile} links (seed ${seed}), the good guests still sending`);
    phase = 'hostile';
    hostileOn = true;
    windows.push({ at: Date.now(), hostile: true });
    const toggle = setInterval(() => {
      hostileOn = !hostileOn;
      windows.push({ at: Date.now(), hostile: hostileOn });
    }, o.windowMs ?? 1000);
    const arb = o.kinds ? hostileCaseArb().filter((c) => o.kinds!.includes(c.k)) : hostileCaseArb();
    try {
      // one property per hostile link, all at once: a case that waits (a link that stops
      // reading, a reconnect) holds up only its own link
      const reports = await Promise.all(
        hostile.map((h, i) =>
          fc.check(
            fc.asyncProperty(arb, async (c) => {
              for (let k = 0; !hostileOn && k < 1000; k++) await sleep(10);
              await waitFor('the hostile link back', () => h.live || !daemon.alive, 10_000, 10);
              if (!daemon.alive) return false;
              await h.run(c);
              if (++casesRun % 10_000 === 0) log(`fuzz: ${casesRun} cases`);
              return daemon.alive;
            }),
            { numRuns: Math.ceil(o.cases / hostile.length), seed: seed + i, endOnFailure: true },
          ),
        ),
      );
      failure = reports
        .filter((r) => r.failed)
        // with endOnFailure the report leaves out what the property threw: add it
        .map((r) => `${fc.defaultReportMessage(r) ?? 'failed'}${r.errorInstance ? `\nGot: ${String(r.errorInstance as Error)}` : ''}`)
        .join('\n');
      if (failure)
        failure += `\nvesperd: pid ${daemon.proc?.pid}, exit code ${daemon.proc?.exitCode}, signal ${daemon.proc?.signalCode}; its last lines:\n${daemon.tail.join('\n')}`;
    } finally {
      clearInterval(toggle);
      windows.push({ at: Date.now(), hostile: null });
    }
    await sleep(1500); // the last records stored and told
    phase = 'done';
    for (const [sent, ms] of samples) {
      let w = -1;
      for (let k = windows.length - 1; k >= 0; k--)
        if (windows[k]!.at <= sent) {
          w = k;
          break;
        }
      if (w < 0 || windows[w]!.hostile === null || sent - windows[w]!.at < 200) continue;
      (windows[w]!.hostile ? lat.hostile : lat.baseline).push(ms);
    }
    goodDisconnects = connectedLines() - lost0;
    // what the hostile guests left in the store must not break reading it: every stored event
    // of theirs, through the API, as `vesper events -o json` prints it
    const q = await runCli(socket, ['events', '--all', '--limit', '100000', '-o', 'json']);
    const lines = q.out.split('\n').filter(Boolean);
    hostileEventsRead = q.code === 0 ? lines.filter((l) => (JSON.parse(l) as { vm: string }).vm.startsWith('bad-')).length : -1;
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    phase = 'done';
    if (rssTimer) clearInterval(rssTimer);
    follower?.kill('SIGKILL');
    for (const h of hostile) h.close();
    await daemon.stop();
    sims?.kill('SIGKILL');
    // a vesperd that crashed leaves its `virsh event` child behind: found by this run's own node file
    const orphans = spawnSync('pgrep', ['-f', `test://${nodeXml}`])
      .stdout.toString()
      .split('\n')
      .filter(Boolean);
    for (const pid of orphans)
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone already
      }
    if (failed) rmSync(dir, { recursive: true, force: true });
  }

  if (o.logFile) writeFileSync(o.logFile, daemon.lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  // The log: lines per VM per second, VM named on every warning, codes told per hostile VM.
  const perVmSecond = new Map<string, number>();
  let withoutVm = 0;
  const codes: Record<string, Set<string>> = {};
  for (const l of daemon.lines) {
    if (l.vm === undefined) {
      if (l.level >= 40) withoutVm++;
      continue;
    }
    const k = `${l.vm}\u0000${Math.floor(l.time / 1000)}`;
    perVmSecond.set(k, (perVmSecond.get(k) ?? 0) + 1);
    if (l.code) (codes[l.vm] ??= new Set()).add(l.code);
  }
  let maxLines = 0;
  let maxVm = '';
  for (const [k, n] of perVmSecond)
    if (n > maxLines) {
      maxLines = n;
      maxVm = k.split('\u0000')[0]!;
    }

  // The store, read after vesperd stopped.
  let db: ReturnType<typeof openStoreForSql>;
  try {
    db = openStoreForSql(storePath);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let foreign = 0;
  let dups = 0;
  let forged = 0;
  let hostileRows = 0;
  try {
    const mark = Buffer.from(HOSTILE_MARK);
    for (const [i, g] of goodVms.entries()) {
      foreign += (
        db
          .prepare(
            `SELECT count(*) AS n FROM events WHERE vm = ? AND ((agent_run IS NOT NULL AND agent_run != ?) OR instr(CAST(payload AS BLOB), ?) > 0)`,
          )
          .get(g, `sim-${i}/${i + 1}`, mark) as { n: number }
      ).n;
    }
    dups = (
      db
        .prepare('SELECT count(*) AS n FROM (SELECT 1 FROM events WHERE seq IS NOT NULL GROUP BY vm, agent_run, seq HAVING count(*) > 1)')
        .get() as { n: number }
    ).n;
    forged = (
      db
        .prepare(
          `SELECT count(*) AS n FROM events WHERE seq IS NOT NULL AND plugin IN ('libvirt', 'channel', 'action', 'pacemaker') AND NOT (plugin = 'channel' AND event = 'records-lost')`,
        )
        .get() as { n: number }
    ).n;
    hostileRows = (db.prepare(`SELECT count(*) AS n FROM events WHERE vm LIKE 'bad-%'`).get() as { n: number }).n;
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }

  const r: FuzzResult = {
    cases: casesRun,
    seed,
    failure,
    hostCrashes: daemon.exits.length,
    crashLogs: daemon.exits,
    goodP99BaselineMs: pct(lat.baseline, 99),
    goodP99HostileMs: pct(lat.hostile, 99),
    goodP50BaselineMs: pct(lat.baseline, 50),
    goodP50HostileMs: pct(lat.hostile, 50),
    goodEventsBaseline: lat.baseline.length,
    goodEventsHostile: lat.hostile.length,
    goodDisconnects,
    baselineRssMb: baselineRss,
    maxRssMb: maxRss,
    maxSessionRssMb: Math.max(0, maxRss - baselineRss) / Math.max(1, o.hostile),
    maxLogLinesPerVmSecond: maxLines,
    maxLogVm: maxVm,
    logLines: daemon.lines.length,
    logLinesWithoutVm: withoutVm,
    codesLogged: Object.fromEntries(Object.entries(codes).map(([k, v]) => [k, [...v].sort()])),
    foreignRows: foreign,
    duplicateRows: dups,
    forgedHostRows: forged,
    hostileRows,
    hostileEventsRead,
    hostileConnections: hostile.reduce((a, h) => a + h.connections, 0),
    wallS: (Date.now() - t0) / 1000,
  };
  return r;
}

// `tsx test/fuzz/hostile-guest.ts [CASES]`: one run, the result as JSON.
if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const cases = Number(process.argv[2] ?? 2000);
  const r = await runHostileFuzz({
    cases,
    hostile: 4,
    good: 4,
    goodRate: 100,
    baselineS: 5,
    seed: process.env['FUZZ_SEED'] ? Number(process.env['FUZZ_SEED']) : undefined,
    logFile: process.env['FUZZ_LOG'],
    kinds: process.env['FUZZ_KINDS']?.split(','),
    log: (s) => console.error(s),
  });
  console.log(JSON.stringify(r, null, 2));
}
