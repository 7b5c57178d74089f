// A real Pacemaker/Corosync cluster of one or two nodes on this machine, for acceptance tests and
// the benchmark. scripts/pacemaker-rig.sh does the work (packages, namespaces, daemons, teardown;
// its header says how two nodes share one kernel); this class drives it and talks to the cluster
// through Pacemaker's own CLI tools, run in a node's context: the host itself for a one-node rig,
// the node's namespaces (via nsenter) for two.
//
// Needs root. Only one rig runs on a machine at a time: start() replaces one whose owner process
// is gone and refuses one still in use.
import { execFile, type ExecFileException } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { XMLParser } from 'fast-xml-parser';

const execFileP = promisify(execFile);

export const RIG_SCRIPT = join(import.meta.dirname, '..', '..', '..', 'scripts', 'pacemaker-rig.sh');
/** Where the rig's corosync.log and pacemaker.log go (one directory per node); kept after stop. */
export const RIG_LOG_DIR = '/var/log/vesper-pcmk-rig';

export interface PacemakerRigOptions {
  /** default 1 */
  nodes?: 1 | 2;
  /** the script's progress lines (apt-get, daemons starting, ...) as they come */
  onProgress?: (line: string) => void;
}

export interface RunOptions {
  /** default 30 s; the tool is killed after it and run() throws */
  timeoutMs?: number;
  /** written to the tool's stdin (otherwise stdin is closed at once: cibadmin without -X reads it) */
  input?: string;
  /** extra environment variables */
  env?: Record<string, string>;
}

export interface NodeCommandResult {
  stdout: string;
  stderr: string;
  /** exit status; run() does not throw for a non-zero one */
  code: number;
}

export interface ResourceState {
  /** active, not failed, in a started role */
  running: boolean;
  /** where it runs (the first node if several), or null */
  node: string | null;
  /** Pacemaker's fail-count summed over nodes (Infinity for INFINITY) */
  failCount: number;
}

const INSTALL_TIMEOUT_MS = 15 * 60_000; // apt-get on a fresh machine
const START_TIMEOUT_MS = 3 * 60_000; // the script's own limits are 120 s for its lock plus 60 s to come online
const STOP_TIMEOUT_MS = 3 * 60_000; // lock plus 30 s for pacemakerd plus 10 s for corosync plus kills
const POLL_MS = 100;

type XmlNode = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseAttributeValue: false,
  parseTagValue: false,
  // Elements that repeat; fast-xml-parser would otherwise make a lone one an object, not an array.
  isArray: (tag) => ['node', 'resource', 'group', 'clone', 'bundle', 'replica', 'resource_history'].includes(tag),
});

function attr(node: unknown, name: string): string | undefined {
  const v = node && typeof node === 'object' ? (node as XmlNode)[`@_${name}`] : undefined;
  return typeof v === 'string' ? v : undefined;
}

function children(node: unknown, name: string): unknown[] {
  const v = node && typeof node === 'object' ? (node as XmlNode)[name] : undefined;
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

/** Every <resource> under `node`, however deep in groups, clones and bundles. */
function allResources(node: unknown): unknown[] {
  if (!node || typeof node !== 'object') return [];
  const out: unknown[] = [];
  for (const [key, value] of Object.entries(node as XmlNode)) {
    if (key.startsWith('@_')) continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      if (key === 'resource') out.push(v);
      out.push(...allResources(v));
    }
  }
  return out;
}

const STARTED_ROLES = new Set(['Started', 'Promoted', 'Unpromoted', 'Master', 'Slave']);

/** The state of resource `rsc` in `crm_mon --output-as=xml` output; exported for unit tests. */
export function parseResourceState(crmMonXml: string, rsc: string): ResourceState {
  const doc = parser.parse(crmMonXml) as unknown;
  const result = children(doc, 'pacemaker-result')[0];
  const found = allResources(children(result, 'resources')[0]).filter((r) => attr(r, 'id') === rsc);
  let running = false;
  let node: string | null = null;
  for (const r of found) {
    const on = children(r, 'node')
      .map((n) => attr(n, 'name'))
      .filter((n): n is string => Boolean(n));
    if (attr(r, 'active') === 'true' && attr(r, 'failed') !== 'true' && STARTED_ROLES.has(attr(r, 'role') ?? '') && on.length > 0) {
      running = true;
      node ??= on[0] ?? null;
    }
  }
  let failCount = 0;
  for (const n of children(children(result, 'node_history')[0], 'node')) {
    for (const h of children(n, 'resource_history')) {
      if (attr(h, 'id') !== rsc) continue;
      const fc = attr(h, 'fail-count');
      if (fc === undefined) continue;
      failCount += /^\+?INFINITY$/i.test(fc) ? Number.POSITIVE_INFINITY : Number(fc) || 0;
    }
  }
  return { running, node, failCount };
}

/** Online state of each node in `crm_mon --output-as=xml` output. */
function parseOnline(crmMonXml: string): Map<string, boolean> {
  const doc = parser.parse(crmMonXml) as unknown;
  const nodes = children(children(children(doc, 'pacemaker-result')[0], 'nodes')[0], 'node');
  return new Map(nodes.map((n) => [attr(n, 'name') ?? '?', attr(n, 'online') === 'true']));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// An XML ID, as the CIB schema requires of resource ids; nothing in it can break an XPath literal.
const XML_ID = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

/** Runs the rig script; stderr lines go to onProgress as they come. Throws with stderr's tail. */
async function script(args: string[], timeoutMs: number, onProgress?: (line: string) => void): Promise<string> {
  const p = execFileP('bash', [RIG_SCRIPT, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' });
  p.child.stdin?.end();
  if (onProgress) {
    let partial = '';
    p.child.stderr?.on('data', (chunk: Buffer | string) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (line) onProgress(line);
    });
  }
  try {
    return (await p).stdout;
  } catch (err) {
    const e = err as ExecFileException & { stderr?: string };
    const how = e.killed ? `timed out after ${timeoutMs} ms` : `failed (exit ${e.code ?? e.signal})`;
    const tail = (e.stderr ?? '').trim().split('\n').slice(-25).join('\n');
    throw new Error(`pacemaker-rig.sh ${args[0]} ${how}:\n${tail}`, { cause: err });
  }
}

export class PacemakerRig {
  private stopped = false;

  private constructor(
    readonly nodeNames: string[],
    private readonly prefixes: Map<string, string[]>,
  ) {}

  /** Installs the packages if missing, starts a fresh cluster (empty CIB) and waits until every node is online. */
  static async start(opts: PacemakerRigOptions = {}): Promise<PacemakerRig> {
    if (process.getuid?.() !== 0) throw new Error('PacemakerRig needs root');
    const nodes = opts.nodes ?? 1;
    await script(['install'], INSTALL_TIMEOUT_MS, opts.onProgress);
    let out: string;
    try {
      out = await script(['start', '--nodes', String(nodes), '--owner', String(process.pid)], START_TIMEOUT_MS, opts.onProgress);
    } catch (err) {
      // The script cleans up after its own failures, but not if it was killed on timeout.
      await PacemakerRig.stopAll().catch(() => undefined);
      throw err;
    }
    const prefixes = new Map<string, string[]>();
    for (const line of out.split('\n')) {
      const tab = line.indexOf('\t');
      if (tab <= 0) continue;
      const words = line.slice(tab + 1).trim();
      prefixes.set(line.slice(0, tab), words ? words.split(/\s+/) : []);
    }
    if (prefixes.size !== nodes) {
      await PacemakerRig.stopAll().catch(() => undefined);
      throw new Error(`pacemaker-rig.sh start reported ${prefixes.size} nodes, expected ${nodes}:\n${out}`);
    }
    return new PacemakerRig([...prefixes.keys()], prefixes);
  }

  /** Stops whatever rig runs on this machine, ours or a crashed run's. Idempotent. */
  static async stopAll(onProgress?: (line: string) => void): Promise<void> {
    await script(['stop'], STOP_TIMEOUT_MS, onProgress);
  }

  /**
   * The program and arguments that run `cmd args` in `node`'s context: the command itself for a
   * one-node rig (the host's tools reach it), wrapped in nsenter for a node with namespaces.
   * For spawning longer-lived things (a vesper daemon, a benchmark client) in a node.
   */
  commandFor(node: string, cmd: string, args: string[]): { file: string; args: string[] } {
    const prefix = this.prefixes.get(node);
    if (!prefix) throw new Error(`no node ${JSON.stringify(node)} in this rig (nodes: ${this.nodeNames.join(', ')})`);
    if (prefix.length === 0) return { file: cmd, args };
    return { file: prefix[0] as string, args: [...prefix.slice(1), cmd, ...args] };
  }

  /** Runs a Pacemaker CLI tool (crm_mon, cibadmin, crm_resource, attrd_updater, ...) in `node`'s context. */
  async run(node: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<NodeCommandResult> {
    const { file, args: argv } = this.commandFor(node, cmd, args);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const p = execFileP(file, argv, {
      timeout: timeoutMs,
      maxBuffer: 64 << 20,
      encoding: 'utf8',
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
    });
    p.child.stdin?.on('error', () => undefined); // a tool that exits without reading its input
    p.child.stdin?.end(opts.input ?? '');
    try {
      const { stdout, stderr } = await p;
      return { stdout, stderr, code: 0 };
    } catch (err) {
      const e = err as ExecFileException & { stdout?: string; stderr?: string };
      if (typeof e.code === 'number' && !e.killed) return { stdout: e.stdout ?? '', stderr: e.stderr ?? '', code: e.code };
      if (e.killed || e.signal) throw new Error(`${cmd} ${args.join(' ')} on ${node}: killed after ${timeoutMs} ms`, { cause: err });
      throw new Error(`${cmd} on ${node}: ${e.message}`, { cause: err });
    }
  }

  /** Like run(), but throws with the tool's stderr unless it exits 0; gives stdout. */
  async check(node: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
    const r = await this.run(node, cmd, args, opts);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} on ${node} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
    return r.stdout;
  }

  /** `crm_mon -1 --output-as=xml` from the first node whose cluster stack answers. */
  async crmMonXml(): Promise<string> {
    let last = '';
    for (const node of this.nodeNames) {
      const r = await this.run(node, 'crm_mon', ['-1', '--output-as=xml'], { timeoutMs: 10_000 });
      if (r.code === 0) return r.stdout;
      last = `${node}: crm_mon exited ${r.code}: ${(r.stderr || r.stdout).trim()}`;
    }
    throw new Error(`no node answers: ${last}`);
  }

  /** Resolves once every node sees every node online; throws after timeoutMs with what it last saw. */
  async waitOnline(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let seen = 'nothing yet';
    for (;;) {
      const views = await Promise.all(
        this.nodeNames.map(async (node) => {
          const r = await this.run(node, 'crm_mon', ['-1', '--output-as=xml'], { timeoutMs: 10_000 });
          return { node, online: r.code === 0 ? parseOnline(r.stdout) : null, err: r.stderr.trim() };
        }),
      );
      if (views.every((v) => v.online && this.nodeNames.every((n) => v.online?.get(n) === true))) return;
      seen = views
        .map((v) =>
          v.online
            ? `${v.node} sees ${[...v.online].map(([n, on]) => `${n}=${on ? 'online' : 'offline'}`).join(' ')}`
            : `${v.node}: ${v.err}`,
        )
        .join('; ');
      if (Date.now() > deadline) throw new Error(`not all nodes online after ${timeoutMs} ms: ${seen}`);
      await sleep(POLL_MS * 2);
    }
  }

  async resourceState(rsc: string): Promise<ResourceState> {
    return parseResourceState(await this.crmMonXml(), rsc);
  }

  /** Adds a resource (a <primitive>, <group>, ... element) to the CIB's resources section. */
  async createPrimitive(xml: string): Promise<void> {
    await this.check(this.nodeNames[0] as string, 'cibadmin', ['--create', '--scope', 'resources', '--xml-text', xml]);
  }

  /**
   * Deletes a resource and the constraints that name it, then waits (bounded) until Pacemaker
   * has stopped it. Deleting one that does not exist is not an error.
   */
  async deleteResource(id: string, timeoutMs = 30_000): Promise<void> {
    if (!XML_ID.test(id)) throw new Error(`${JSON.stringify(id)} is not a valid resource id`);
    const node = this.nodeNames[0] as string;
    // Constraints first: the schema rejects a CIB whose constraint names a missing resource.
    // cibadmin --delete --xpath removes one match per call and exits 0 even for none, while
    // --query exits 105 (no such device or address) for none.
    for (const xpath of [`//constraints/*[@rsc='${id}']`, `//resources//*[@id='${id}']`]) {
      for (let i = 0; ; i++) {
        const q = await this.run(node, 'cibadmin', ['--query', '--xpath', xpath]);
        if (q.code === 105) break;
        if (q.code !== 0) throw new Error(`cibadmin --query --xpath "${xpath}" exited ${q.code}: ${q.stderr.trim()}`);
        if (i === 100) throw new Error(`more than 100 CIB elements match ${xpath}`);
        await this.check(node, 'cibadmin', ['--delete', '--xpath', xpath]);
      }
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const state = await this.resourceState(id);
      if (!state.running) return;
      if (Date.now() > deadline) throw new Error(`resource ${id} still runs on ${state.node} ${timeoutMs} ms after its deletion`);
      await sleep(POLL_MS);
    }
  }

  /** Stops the cluster and removes what the rig made. Safe to call twice. */
  async stop(onProgress?: (line: string) => void): Promise<void> {
    if (this.stopped) return;
    await PacemakerRig.stopAll(onProgress);
    this.stopped = true;
  }
}
