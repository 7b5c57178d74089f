import semver from 'semver';
import { ErrorCode, VesperError } from '../proto/errors.js';
import type { ProbeManifest } from './probe-api.js';

const PAYLOADS = new Set(['signal', 'oom', 'exec', 'exit', 'fork', 'psi', 'kprobe', 'heartbeat', 'generic']);
const TYPES = new Set(['string', 'int', 'bool', 'list', 'duration_ms']);

/** Parses and checks a module manifest; every problem is named. */
export function parseManifest(bytes: Uint8Array, agentVersion: string): ProbeManifest {
  let m: ProbeManifest;
  try {
    m = JSON.parse(Buffer.from(bytes).toString('utf8')) as ProbeManifest;
  } catch (err) {
    throw new VesperError(ErrorCode.PROBE_BAD_MANIFEST, `manifest is not JSON: ${(err as Error).message}`);
  }
  const problems: string[] = [];
  if (typeof m?.name !== 'string' || !/^[a-z][a-z0-9_-]{0,31}$/.test(m.name))
    problems.push('name must be lower-case letters, digits, - or _');
  if (typeof m?.version !== 'string' || !semver.valid(m.version)) problems.push('version must be semver');
  if (typeof m?.agent !== 'string' || !semver.validRange(m.agent)) problems.push('agent must be a semver range');
  if (!Array.isArray(m?.events) || m.events.length === 0) problems.push('events must be a non-empty list');
  else
    for (const e of m.events)
      if (!e || typeof e !== 'object' || !Number.isInteger(e.id) || e.id < 1 || typeof e.name !== 'string' || !PAYLOADS.has(e.payload))
        problems.push(`event ${JSON.stringify(e)} needs an id >= 1, a name and a known payload`);
  if (!Array.isArray(m?.params)) problems.push('params must be a list');
  else
    for (const p of m.params)
      if (!p || typeof p !== 'object' || typeof p.name !== 'string' || !TYPES.has(p.type) || typeof p.default !== 'string')
        problems.push(`param ${JSON.stringify(p?.name)} needs a name, a known type and a text default`);
  if (Array.isArray(m?.events) && new Set(m.events.map((e) => e?.id)).size !== m.events.length) problems.push('event ids must be unique');
  if (Array.isArray(m?.params) && new Set(m.params.map((p) => p?.name)).size !== m.params.length)
    problems.push('param names must be unique');
  if (!Number.isInteger(m?.maxInstances) || m.maxInstances < 1) problems.push('maxInstances must be an integer >= 1');
  if (problems.length) throw new VesperError(ErrorCode.PROBE_BAD_MANIFEST, `bad probe manifest: ${problems.join('; ')}`);
  if (!semver.satisfies(agentVersion, m.agent, { includePrerelease: true }))
    throw new VesperError(
      ErrorCode.PROBE_AGENT_VERSION,
      `probe ${m.name} ${m.version} needs agent ${m.agent}; this agent is ${agentVersion}`,
    );
  return m;
}
