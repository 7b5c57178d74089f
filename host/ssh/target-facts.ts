// The target as found before any change: who logs in, which node and init system it has, and
// what of an install is already there (remote/facts.sh prints it as key=value lines).
import type { AgentLayout } from './agent-link.js';
import { AGENT_WRAPPER, BUNDLE, HOST_KEY, MARKER, NODE, OWNER_MARK, RELAY_WRAPPER, unitPath, type InstallRecord } from './agent-files.js';
import type { SshConnection } from './connect.js';
import factsScript from './remote/facts.sh';
import { sh } from './target-shell.js';

export interface Facts {
  uid: number;
  arch: string;
  nodePath: string;
  nodeVersion: string;
  systemd: boolean;
  hasSha256sum: boolean;
  /** the prefix exists and holds something */
  prefixUsed: boolean;
  /** the prefix is vesper's (install created it) */
  owned: boolean;
  /** sha256 of files already in place, by path relative to the prefix ('' for the unit) */
  sha: Map<string, string>;
  record: InstallRecord | null;
  /** pid from the pid file, when that process lives */
  pid: number;
  unitActive: string;
  unitEnabled: string;
}

/** Files under the prefix whose sha256 facts.sh reports. */
const EXISTING = [BUNDLE, HOST_KEY, NODE, AGENT_WRAPPER, RELAY_WRAPPER];

export async function factsOf(conn: SshConnection, l: AgentLayout): Promise<Facts> {
  const out = await sh(conn, 'looking at the target', factsScript, 30_000, [
    l.prefix,
    l.runDir,
    l.unit,
    unitPath(l),
    OWNER_MARK,
    MARKER,
    ...EXISTING,
  ]);
  return parseFacts(out);
}

export function parseFacts(out: string): Facts {
  const kv = new Map<string, string>();
  const sha = new Map<string, string>();
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const k = line.slice(0, eq);
    const v = line.slice(eq + 1).trim();
    if (k.startsWith('sha:')) {
      const path = k.slice(4);
      sha.set(path === 'unit' ? '' : path, v);
    } else kv.set(k, v);
  }
  let record: InstallRecord | null = null;
  try {
    record = kv.get('record') ? (JSON.parse(kv.get('record')!) as InstallRecord) : null;
  } catch {
    record = null; // a damaged marker: the install is not whole
  }
  return {
    uid: Number(kv.get('uid') ?? -1),
    arch: kv.get('arch') ?? '',
    nodePath: kv.get('node') ?? '',
    nodeVersion: kv.get('nodever') ?? '',
    systemd: kv.get('systemd') === '1',
    hasSha256sum: kv.get('sha256sum') === '1',
    prefixUsed: kv.get('prefix_used') === '1',
    owned: kv.get('owned') === '1',
    sha,
    record,
    pid: Number(kv.get('pid') ?? 0),
    unitActive: kv.get('unit_active') ?? '',
    unitEnabled: kv.get('unit_enabled') ?? '',
  };
}
