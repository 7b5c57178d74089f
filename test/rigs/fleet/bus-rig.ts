// A fleet on one machine: a three-node NATS JetStream cluster and a few "hosts", each a network
// namespace of its own, all on one bridge that lives in a switch namespace (nothing is added to
// the machine's own network). Real nats-server processes (Debian's, 2.9) with JetStream
// clustering; cutting a host off the bus is its switch port going down; killing a node is
// SIGKILL. Names carry a random tag so two rigs (or helpers) never share anything; stop()
// removes every namespace and process it made, and is safe to call twice.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const NET = '10.213.7'; // inside the rig's own namespaces only
export const NODE_IPS = ['11', '12', '13'].map((h) => `${NET}.${h}`);
const CLIENT_PORT = 4222;
const ROUTE_PORT = 6222;
const MONITOR_PORT = 8222;

/** Why a bus rig cannot run here ('' if it can). */
export function whyNoBusRig(): string {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  if (spawnSync('nats-server', ['--version']).status !== 0) return 'nats-server is not installed (scripts/ensure-deps.sh installs it)';
  if (spawnSync('ip', ['netns', 'list']).status !== 0) return 'ip netns does not work here';
  if (spawnSync('curl', ['--version']).status !== 0)
    return "curl is not installed (the tests read nats-server's monitoring endpoint with it)";
  return '';
}

function sh(args: string[], ns?: string): void {
  const argv = ns ? ['netns', 'exec', ns, ...args] : args;
  const r = spawnSync(ns ? 'ip' : args[0]!, ns ? argv : args.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${(ns ? ['ip', ...argv] : args).join(' ')}: ${r.stderr || r.error?.message}`);
}

/** What the tests read of nats-server's /jsz report. */
export interface Jsz {
  account_details?: Array<{
    stream_detail?: Array<{ name: string; cluster?: { leader?: string }; consumer_detail?: Array<{ name: string }> }>;
  }>;
}

export interface BusNode {
  name: string;
  ns: string;
  ip: string;
  url: string;
  proc: ChildProcess | null;
}

export class BusRig {
  readonly tag = randomBytes(3).toString('hex');
  readonly dir = mkdtempSync(join(tmpdir(), 'vesper-busrig-'));
  readonly nodes: BusNode[] = [];
  private readonly namespaces: string[] = [];
  private readonly sw: string;
  private readonly ports = new Map<string, string>(); // ns → its switch-side veth
  private nextHostIp = 21;

  constructor() {
    this.sw = `vfl${this.tag}sw`;
  }

  get urls(): string[] {
    return this.nodes.map((n) => n.url);
  }

  /** A namespace on the bridge with an address; returns the address. */
  addNamespace(role: string, ipLast: number): { ns: string; ip: string } {
    const ns = `vfl${this.tag}${role}`;
    const port = `v${this.tag}${role}`.slice(0, 15);
    const inner = `i${this.tag}${role}`.slice(0, 15);
    sh(['ip', 'netns', 'add', ns]);
    this.namespaces.push(ns);
    sh(['ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', inner]);
    sh(['ip', 'link', 'set', port, 'netns', this.sw]);
    sh(['ip', 'link', 'set', inner, 'netns', ns]);
    sh(['ip', 'link', 'set', port, 'master', 'br0', 'up'], this.sw);
    sh(['ip', 'addr', 'add', `${NET}.${ipLast}/24`, 'dev', inner], ns);
    sh(['ip', 'link', 'set', inner, 'up'], ns);
    sh(['ip', 'link', 'set', 'lo', 'up'], ns);
    this.ports.set(ns, port);
    return { ns, ip: `${NET}.${ipLast}` };
  }

  /** The switch and three JetStream nodes, started; resolves once each node listens. */
  async start(): Promise<void> {
    sh(['ip', 'netns', 'add', this.sw]);
    this.namespaces.push(this.sw);
    sh(['ip', 'link', 'add', 'br0', 'type', 'bridge'], this.sw);
    sh(['ip', 'link', 'set', 'br0', 'up'], this.sw);
    NODE_IPS.forEach((ip, i) => {
      const name = `n${i + 1}`;
      const { ns } = this.addNamespace(name, Number(ip.split('.')[3]));
      this.nodes.push({ name, ns, ip, url: `nats://${ip}:${CLIENT_PORT}`, proc: null });
    });
    for (const n of this.nodes) this.startNode(n);
    for (const n of this.nodes) await this.waitListening(n);
  }

  /** A host namespace (a vesperd "host" or a subscriber). */
  addHost(role: string): { ns: string; ip: string } {
    return this.addNamespace(role, this.nextHostIp++);
  }

  startNode(n: BusNode): void {
    const store = join(this.dir, n.name);
    mkdirSync(store, { recursive: true });
    const routes = this.nodes.filter((o) => o !== n).map((o) => `nats://${o.ip}:${ROUTE_PORT}`);
    const conf = join(this.dir, `${n.name}.conf`);
    writeFileSync(
      conf,
      [
        `server_name: ${n.name}`,
        `listen: ${n.ip}:${CLIENT_PORT}`,
        `http: ${n.ip}:${MONITOR_PORT}`,
        `jetstream { store_dir: "${store}" }`,
        `cluster { name: vesper-rig, listen: ${n.ip}:${ROUTE_PORT}, routes: [${routes.join(', ')}] }`,
        '',
      ].join('\n'),
    );
    const log = join(this.dir, `${n.name}.log`);
    n.proc = spawn('ip', ['netns', 'exec', n.ns, 'nats-server', '-c', conf, '-l', log], { stdio: 'ignore' });
  }

  /** SIGKILL: the node dies as a crashed machine would (its store stays for a restart). */
  killNode(n: BusNode): void {
    n.proc?.kill('SIGKILL');
    n.proc = null;
  }

  /** A running node's JetStream report (its monitoring endpoint's /jsz with streams and consumers), or null. */
  jsz(n: BusNode): Jsz | null {
    if (!n.proc) return null;
    const url = `http://${n.ip}:${MONITOR_PORT}/jsz?accounts=true&streams=true&consumers=true`;
    const r = spawnSync('ip', ['netns', 'exec', n.ns, 'curl', '-sf', '--max-time', '3', url], { encoding: 'utf8', timeout: 5000 });
    if (r.status !== 0) return null;
    try {
      return JSON.parse(r.stdout) as Jsz;
    } catch {
      return null;
    }
  }

  /** The running nodes that host a consumer of the stream (an R1 consumer lives on one only). */
  consumerNodes(stream: string): BusNode[] {
    return this.nodes.filter((n) =>
      (this.jsz(n)?.account_details ?? []).some((a) =>
        (a.stream_detail ?? []).some((s) => s.name === stream && (s.consumer_detail ?? []).length > 0),
      ),
    );
  }

  /** The stream's leader as a running node reports it ('' when unknown). */
  streamLeader(stream: string): string {
    for (const n of this.nodes) {
      for (const a of this.jsz(n)?.account_details ?? [])
        for (const s of a.stream_detail ?? []) if (s.name === stream && s.cluster?.leader) return s.cluster.leader;
    }
    return '';
  }

  /** The host's switch port down (true) or up again (false): cut off from the bus, or back. */
  cut(ns: string, off: boolean): void {
    sh(['ip', 'link', 'set', this.ports.get(ns)!, off ? 'down' : 'up'], this.sw);
  }

  private async waitListening(n: BusNode): Promise<void> {
    const until = Date.now() + 20_000;
    while (Date.now() < until) {
      const r = spawnSync('ip', ['netns', 'exec', n.ns, 'ss', '-Hltn', `sport = :${CLIENT_PORT}`], { encoding: 'utf8' });
      if (r.stdout.includes(`${CLIENT_PORT}`)) return;
      if (n.proc?.exitCode !== null)
        throw new Error(`nats-server ${n.name} exited (${n.proc?.exitCode}); see ${join(this.dir, `${n.name}.log`)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`nats-server ${n.name} does not listen after 20 s`);
  }

  stop(keepDir = false): void {
    for (const n of this.nodes) this.killNode(n);
    for (const ns of this.namespaces.splice(0).reverse()) {
      // processes still in it (a host, a subscriber) go with it
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
      for (const p of pids) {
        try {
          process.kill(Number(p), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      spawnSync('ip', ['netns', 'del', ns]);
    }
    if (!keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}
