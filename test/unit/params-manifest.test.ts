import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { ManifestParam, ProbeManifest } from '../../contract/probe-api.js';
import { parseManifest } from '../../contract/manifest.js';
import { parseParam, resolveParams } from '../../contract/params.js';
import { ErrorCode } from '../../proto/errors.js';
import { VESPER_VERSION } from '../../proto/version.js';
import { caught } from '../helpers/caught.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

const param = (type: ManifestParam['type'], name = 'p', def = ''): ManifestParam => ({ name, type, default: def, description: '' });

describe('parseParam', () => {
  it('int: accepts optional minus and surrounding space, refuses anything else', () => {
    const p = param('int', 'threshold_us');
    expect(parseParam(p, '42')).toBe(42);
    expect(parseParam(p, ' -17 ')).toBe(-17);
    expect(parseParam(p, '0')).toBe(0);
    for (const bad of ['', '1.5', '1e3', '0x10', '12abc', '+3', '- 3', 'NaN']) {
      const e = caught(() => parseParam(p, bad));
      expect(e.code, bad).toBe(ErrorCode.PROBE_BAD_PARAM);
      expect(e.message).toBe(`parameter threshold_us=${JSON.stringify(bad)} is not an integer`);
    }
  });

  it('bool: 1/true/yes/on and 0/false/no/off in any case', () => {
    const p = param('bool', 'fork');
    for (const t of ['1', 'true', 'TRUE', 'Yes', 'on', ' On ']) expect(parseParam(p, t), t).toBe(true);
    for (const t of ['0', 'false', 'False', 'NO', 'off', ' off']) expect(parseParam(p, t), t).toBe(false);
    for (const t of ['', '2', 'y', 'n', 'enabled', 'truex']) {
      const e = caught(() => parseParam(p, t));
      expect(e.code).toBe(ErrorCode.PROBE_BAD_PARAM);
      expect(e.message).toContain('is not true or false');
    }
  });

  it('list: comma-separated, trimmed, empty items dropped', () => {
    const p = param('list', 'signals');
    expect(parseParam(p, 'SEGV,BUS,ILL')).toEqual(['SEGV', 'BUS', 'ILL']);
    expect(parseParam(p, ' a , b ,, c ,')).toEqual(['a', 'b', 'c']);
    expect(parseParam(p, '')).toEqual([]);
    expect(parseParam(p, '   ')).toEqual([]);
    expect(parseParam(p, 'one')).toEqual(['one']);
  });

  it('duration_ms: bare numbers are ms; ms, s and m suffixes', () => {
    const p = param('duration_ms', 'interval_ms');
    expect(parseParam(p, '500')).toBe(500);
    expect(parseParam(p, '500ms')).toBe(500);
    expect(parseParam(p, '250 ms')).toBe(250);
    expect(parseParam(p, '2s')).toBe(2000);
    expect(parseParam(p, '1.5s')).toBe(1500);
    expect(parseParam(p, '0.0015s')).toBe(2); // rounded to whole ms
    expect(parseParam(p, '2m')).toBe(120_000);
    expect(parseParam(p, '0.5m')).toBe(30_000);
    expect(parseParam(p, ' 10s ')).toBe(10_000);
    expect(parseParam(p, '0')).toBe(0);
    for (const bad of ['', '-5', '5h', '5 sec', '1.s', 's', '2S', '1,5s']) {
      const e = caught(() => parseParam(p, bad));
      expect(e.code, bad).toBe(ErrorCode.PROBE_BAD_PARAM);
      expect(e.message).toContain('is not a duration');
    }
  });

  it('string: the text as given', () => {
    expect(parseParam(param('string'), ' sig == 11 ')).toBe(' sig == 11 ');
    expect(parseParam(param('string'), '')).toBe('');
  });
});

const manifest: ProbeManifest = {
  name: 'demo',
  version: '1.2.3',
  agent: '>=0.1.0 <1.0.0',
  description: 'a test probe',
  maxInstances: 4,
  events: [{ id: 1, name: 'ev', payload: 'generic', description: '' }],
  params: [
    param('duration_ms', 'interval', '1s'),
    param('list', 'names', ''),
    param('bool', 'verbose', 'false'),
    param('int', 'limit', '10'),
    param('string', 'label', 'x'),
  ],
};

describe('resolveParams', () => {
  it('fills in defaults', () => {
    const r = resolveParams(manifest);
    expect(r.text).toEqual({ interval: '1s', names: '', verbose: 'false', limit: '10', label: 'x' });
    expect(r.typed).toEqual({ interval: 1000, names: [], verbose: false, limit: 10, label: 'x' });
  });

  it('applies overrides in order: later lists win', () => {
    const r = resolveParams(
      manifest,
      [
        { name: 'limit', value: '5' },
        { name: 'names', value: 'a,b' },
      ],
      null,
      undefined,
      [
        { name: 'limit', value: '7' },
        { name: 'verbose', value: 'yes' },
      ],
    );
    expect(r.text).toEqual({ interval: '1s', names: 'a,b', verbose: 'yes', limit: '7', label: 'x' });
    expect(r.typed).toEqual({ interval: 1000, names: ['a', 'b'], verbose: true, limit: 7, label: 'x' });
  });

  it('takes a null value as the empty text', () => {
    const r = resolveParams(manifest, [{ name: 'label', value: null }]);
    expect(r.text.label).toBe('');
    expect(r.typed.label).toBe('');
  });

  it('refuses an unknown name, listing the known ones', () => {
    const e = caught(() =>
      resolveParams(manifest, [
        { name: 'limit', value: '1' },
        { name: 'nope', value: '1' },
      ]),
    );
    expect(e.code).toBe(ErrorCode.PROBE_BAD_PARAM);
    expect(e.message).toBe('probe demo has no parameter "nope" (it has: interval, names, verbose, limit, label)');
    const e2 = caught(() => resolveParams(manifest, [{ value: '1' }]));
    expect(e2.code).toBe(ErrorCode.PROBE_BAD_PARAM);
    expect(e2.message).toContain('no parameter ""');
    const none = { ...manifest, params: [] };
    expect(caught(() => resolveParams(none, [{ name: 'x', value: '1' }])).message).toContain('(it has: none)');
  });

  it('refuses an override of the wrong type', () => {
    const e = caught(() => resolveParams(manifest, [{ name: 'limit', value: 'ten' }]));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_PARAM);
    expect(e.message).toBe('parameter limit="ten" is not an integer');
  });
});

const validManifest = (): Record<string, unknown> => JSON.parse(JSON.stringify(manifest)) as Record<string, unknown>;
const bytes = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));

describe('parseManifest', () => {
  it('accepts a valid manifest and returns it', () => {
    const m = parseManifest(bytes(manifest), '0.1.0');
    expect(m).toEqual(manifest);
  });

  it('refuses bytes that are not JSON', () => {
    const e = caught(() => parseManifest(Buffer.from('{"name": '), '0.1.0'));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
    expect(e.message).toMatch(/^manifest is not JSON: /);
  });

  it('lists every problem at once', () => {
    const m = validManifest();
    m.name = 'Bad Name';
    m.version = 'one';
    m.agent = 'not a range !!';
    m.maxInstances = 0;
    const e = caught(() => parseManifest(bytes(m), '0.1.0'));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
    expect(e.message).toBe(
      'bad probe manifest: name must be lower-case letters, digits, - or _; version must be semver; agent must be a semver range; maxInstances must be an integer >= 1',
    );
  });

  it('names a bad event and a bad param', () => {
    const m = validManifest();
    m.events = [
      { id: 1, name: 'ok', payload: 'signal' },
      { id: 0, name: 'zero', payload: 'signal' },
      { id: 2, name: 'weird', payload: 'telepathy' },
    ];
    m.params = [param('int', 'fine', '1'), { name: 'p2', type: 'float', default: '1' }, { name: 'p3', type: 'int', default: 3 }];
    const e = caught(() => parseManifest(bytes(m), '0.1.0'));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
    expect(e.message).toContain('event {"id":0,"name":"zero","payload":"signal"} needs an id >= 1');
    expect(e.message).toContain('event {"id":2,"name":"weird","payload":"telepathy"} needs');
    expect(e.message).toContain('param "p2" needs a name, a known type and a text default');
    expect(e.message).toContain('param "p3" needs');
    expect(e.message).not.toContain('"ok"');
    expect(e.message).not.toContain('"fine"');
  });

  it('refuses missing or empty events, missing params and a non-integer maxInstances', () => {
    for (const [mutate, text] of [
      [(m: Record<string, unknown>) => (m.events = []), 'events must be a non-empty list'],
      [(m: Record<string, unknown>) => delete m.events, 'events must be a non-empty list'],
      [(m: Record<string, unknown>) => delete m.params, 'params must be a list'],
      [(m: Record<string, unknown>) => (m.maxInstances = 1.5), 'maxInstances must be an integer >= 1'],
      [(m: Record<string, unknown>) => (m.name = 'a'.repeat(33)), 'name must be'],
      [(m: Record<string, unknown>) => (m.name = '9lives'), 'name must be'],
    ] as const) {
      const m = validManifest();
      mutate(m);
      const e = caught(() => parseManifest(bytes(m), '0.1.0'));
      expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
      expect(e.message).toContain(text);
    }
    // The 32-character limit itself is fine.
    const m = validManifest();
    m.name = 'a'.repeat(32);
    expect(parseManifest(bytes(m), '0.1.0').name).toBe('a'.repeat(32));
  });

  it('refuses JSON that is not an object with a VSP_PROBE_BAD_MANIFEST error, not a crash', () => {
    for (const text of ['null', '42', '"str"', '[]']) {
      const e = caught(() => parseManifest(Buffer.from(text), '0.1.0'));
      expect(e.code, text).toBe(ErrorCode.PROBE_BAD_MANIFEST);
    }
  });

  it.each(['events', 'params'] as const)('refuses a null entry in %s with VSP_PROBE_BAD_MANIFEST, not a TypeError', (key) => {
    const m = validManifest();
    m[key] = [null];
    const e = caught(() => parseManifest(bytes(m), '0.1.0'));
    expect(e.code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
    expect(e.message).toMatch(/^bad probe manifest: /);
  });

  it('checks the agent version against the range', () => {
    const m = validManifest();
    m.agent = '>=0.2.0';
    const e = caught(() => parseManifest(bytes(m), '0.1.0'));
    expect(e.code).toBe(ErrorCode.PROBE_AGENT_VERSION);
    expect(e.message).toBe('probe demo 1.2.3 needs agent >=0.2.0; this agent is 0.1.0');
    expect(parseManifest(bytes(m), '0.2.0').agent).toBe('>=0.2.0');
    expect(parseManifest(bytes(m), '1.0.0').agent).toBe('>=0.2.0');
    // <1.0.0 excludes 1.0.0; prereleases count as in range
    expect(caught(() => parseManifest(bytes(manifest), '1.0.0')).code).toBe(ErrorCode.PROBE_AGENT_VERSION);
    expect(parseManifest(bytes(manifest), '0.9.0-rc.1').name).toBe('demo');
  });

  it('runs the structural checks before the version check', () => {
    const m = validManifest();
    m.agent = '>=5.0.0';
    m.version = 'x';
    expect(caught(() => parseManifest(bytes(m), '0.1.0')).code).toBe(ErrorCode.PROBE_BAD_MANIFEST);
  });
});

describe('the real probe manifests', () => {
  const dirs = readdirSync(join(root, 'probes')).filter((d) => existsSync(join(root, 'probes', d, 'manifest.json')));

  it('are all found', () => {
    expect(dirs.sort()).toEqual(['heartbeat', 'kprobe', 'oom', 'process', 'psi', 'signal']);
  });

  it.each(['heartbeat', 'kprobe', 'oom', 'process', 'psi', 'signal'])(
    '%s parses with this agent version, and its defaults resolve',
    (name) => {
      const raw = readFileSync(join(root, 'probes', name, 'manifest.json'));
      const m = parseManifest(raw, VESPER_VERSION);
      expect(m.name).toBe(name);
      expect(m.events.length).toBeGreaterThan(0);
      // Every default is valid for its type.
      const { typed } = resolveParams(m);
      expect(Object.keys(typed).sort()).toEqual(m.params.map((p) => p.name).sort());
      // Event ids are unique within a probe.
      expect(new Set(m.events.map((e) => e.id)).size).toBe(m.events.length);
    },
  );

  it('have the expected typed defaults for a few known parameters', () => {
    const load = (n: string): ProbeManifest => parseManifest(readFileSync(join(root, 'probes', n, 'manifest.json')), VESPER_VERSION);
    expect(resolveParams(load('heartbeat')).typed.interval_ms).toBe(1000);
    expect(resolveParams(load('oom')).typed).toEqual({ detail_wait_ms: 1000, cgroups: [] });
    expect(resolveParams(load('signal')).typed.signals).toEqual([
      'SEGV',
      'BUS',
      'ILL',
      'FPE',
      'ABRT',
      'SYS',
      'TRAP',
      'KILL',
      'TERM',
      'QUIT',
      'INT',
      'HUP',
    ]);
    expect(resolveParams(load('process')).typed).toEqual({ comms: [], fork: false, threads: false, exit_status: true });
    expect(resolveParams(load('psi')).typed).toMatchObject({ threshold_us: 100000, window_us: 1000000, resource: 'memory' });
  });
});
