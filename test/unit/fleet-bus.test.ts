// The fleet bus without a server: subjects (escaping is one-to-one and NATS-safe), the nats sink's
// config, the bus options of `vesper fleet`, and the cross-host analysis (each host's clock put
// on the bus's, one timeline with both hosts' events). The real bus: test/acceptance/fleet-bus.test.ts.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { eventSubject, isEventSubject, parseSubject, subjectFilter, subjectToken, tokenName } from '../../host/export/nats-subject.js';
import { parseNatsParams } from '../../host/export/nats-config.js';
import { SINK_KINDS } from '../../host/export/kinds.js';
import { DEFAULT_RUNNER_OPTIONS } from '../../host/export/exporter.js';
import { sinksSchema, toSinkConfig } from '../../host/config/sinks.js';
import { busConfig } from '../../host/cli/fleet.js';
import { ArraySource, fleetAnalyze, hostClocks, hostsText } from '../../host/fleet/analyze.js';
import type { BusEvent } from '../../host/fleet/bus.js';
import { analysisText } from '../../host/analysis/text.js';

describe('subjects', () => {
  it('a token is never empty and holds no dot, wildcard or white space, and decodes back to the name', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (name) => {
        const t = subjectToken(name);
        expect(t).toMatch(/^[A-Za-z0-9_~-]+$/);
        expect(tokenName(t)).toBe(name);
      }),
      { numRuns: 500 },
    );
  });

  it('names that differ get different tokens: vm.a, vm_a, vm~2Ea and the empty name', () => {
    const names = ['vm.a', 'vm_a', 'vm~2Ea', '', '~', 'vm a', 'vm*', 'vm>'];
    const tokens = names.map(subjectToken);
    expect(new Set(tokens).size).toBe(names.length);
    expect(subjectToken('web-01_x')).toBe('web-01_x');
  });

  it('a subject carries host, VM, plugin and event, and parses back', () => {
    const p = { host: 'hv1.example', vm: 'db 1', plugin: 'signal', event: 'signal' };
    const s = eventSubject('vesper', p);
    expect(s).toBe('vesper.hv1~2Eexample.db~201.signal.signal');
    expect(parseSubject('vesper', s)).toEqual(p);
    expect(parseSubject('other', s)).toBeNull();
    expect(subjectFilter('vesper', {})).toBe('vesper.*.*.*.*');
    expect(subjectFilter('vesper', { vm: 'db 1' })).toBe('vesper.*.db~201.*.*');
    expect(subjectFilter('vesper', { host: 'hv1.example', vm: '' })).toBe('vesper.hv1~2Eexample.~.*.*');
  });
  it("the reader's quick check of a subject says what parseSubject says", () => {
    for (const s of [
      'vesper.h.v.p.e',
      'vesper.h.v.p',
      'vesper.h.v.p.e.x',
      'vesperx.h.v.p.e',
      'vesper',
      'vesper.',
      'other.h.v.p.e',
      'vesper.~.~.a.b',
    ])
      expect(isEventSubject('vesper', s), s).toBe(parseSubject('vesper', s) !== null);
    fc.assert(
      fc.property(fc.array(fc.constantFrom('vesper', 'x', '~', ''), { maxLength: 7 }), (parts) => {
        const s = parts.join('.');
        expect(isEventSubject('vesper', s)).toBe(parseSubject('vesper', s) !== null);
      }),
    );
  });
});

describe('nats sink config', () => {
  it('has defaults: stream VESPER, limits retention, one replica, a 10 min duplicate window', () => {
    const c = parseNatsParams({ servers: 'nats://a:4222,nats://b:4222' });
    expect(c.stream).toEqual({ name: 'VESPER', create: true, retention: 'limits', replicas: 1, duplicate_window: '10m', storage: 'file' });
    expect(c.subject_prefix).toBe('vesper');
    expect(c.ack_timeout).toBe('5s');
  });

  it('refuses unknown keys, a bad duration and a prefix that is not one token, with VSP_CONFIG_INVALID', () => {
    for (const bad of [
      { servers: 'nats://a', stream: { replica: 3 } },
      { servers: 'nats://a', stream: { duplicate_window: '10' } },
      { servers: 'nats://a', subject_prefix: 'a.b' },
      { servers: [] },
      { servers: 'nats://a', credentials: { user: 'u' } },
    ])
      expect(() => parseNatsParams(bad)).toThrow(expect.objectContaining({ code: 'VSP_CONFIG_INVALID' }));
  });

  it('is registered as the sink kind nats', () => {
    const s = SINK_KINDS['nats']!(
      { name: 'bus', kind: 'nats', run: DEFAULT_RUNNER_OPTIONS, params: { servers: 'nats://127.0.0.1:1' } },
      { host: 'h1' },
    );
    expect(s.kind).toBe('nats');
    expect(s.name).toBe('bus');
  });

  it('is a kind of the sinks: list, with the runner keys beside its own', () => {
    const [c] = sinksSchema
      .parse([{ name: 'bus', kind: 'nats', batch_max: 5000, servers: ['nats://a:4222'], stream: { replicas: 3 } }])
      .map(toSinkConfig);
    expect(c!.run.batchMax).toBe(5000);
    expect(c!.params).toMatchObject({ servers: ['nats://a:4222'], stream: { name: 'VESPER', replicas: 3 } });
    expect(() => sinksSchema.parse([{ name: 'bus', kind: 'nats', servers: 'nats://a', stream: { replica: 3 } }])).toThrow();
  });
});

describe('vesper fleet: where the bus is', () => {
  it("takes --bus, else VESPER_BUS, else the config file's nats sink (runner keys left out)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleet-cfg-'));
    const file = join(dir, 'vesper.yaml');
    writeFileSync(
      file,
      'sinks:\n  - name: hook\n    kind: webhook\n    url: http://x/\n  - name: bus\n    kind: nats\n    batch_max: 500\n    servers: [nats://n1:4222]\n    stream: { name: FLEET, replicas: 3 }\n',
    );
    expect(busConfig({ config: file }).servers).toEqual(['nats://n1:4222']);
    expect(busConfig({ config: file }).stream.name).toBe('FLEET');
    expect(busConfig({ config: file, stream: 'OTHER' }).stream).toMatchObject({ name: 'OTHER', replicas: 3 });
    expect(busConfig({ config: file, bus: 'nats://x:1' }).servers).toBe('nats://x:1');
    expect(busConfig({}, { VESPER_BUS: 'nats://e:1' }).servers).toBe('nats://e:1');
    expect(busConfig({ bus: 'nats://x:1', user: 'u' }, { VESPER_BUS_PASSWORD: 'p' }).credentials).toEqual({ user: 'u', password: 'p' });
    expect(() => busConfig({}, {})).toThrow(expect.objectContaining({ code: 'VSP_USAGE' }));
    expect(() => busConfig({ config: file, sink: 'nope' })).toThrow(expect.objectContaining({ code: 'VSP_CONFIG_INVALID' }));
  });
});

const S = 1_000_000;
let seq = 0;
function ev(
  host: string,
  id: number,
  hostTimeUs: number,
  busDelayUs: number,
  plugin: string,
  event: string,
  payload: Record<string, unknown> = {},
): BusEvent {
  return {
    id,
    eventId: `${host}/${id}`,
    host,
    vm: 'web',
    plugin,
    instance: 0,
    event,
    guestTimeUs: null,
    hostTimeUs,
    agentRun: null,
    seq: null,
    disposition: 'notify',
    payload,
    streamSeq: ++seq,
    busTimeUs: hostTimeUs + busDelayUs, // the caller sets the bus time it wants
  };
}

describe('vesper fleet analyze', () => {
  // Host A's clock is 5 s behind the bus, host B's 2 s ahead; publish delays 3-40 ms, one backlog of 20 s.
  const T = 1_800_000_000 * S;
  const mk = (
    host: 'A' | 'B',
    id: number,
    busUs: number,
    delayUs: number,
    plugin: string,
    event: string,
    payload?: Record<string, unknown>,
  ): BusEvent => {
    const skew = host === 'A' ? -5 * S : 2 * S;
    const e = ev(host, id, busUs - delayUs + skew, delayUs, plugin, event, payload);
    e.busTimeUs = busUs;
    return e;
  };
  const events = [
    mk('A', 10, T, 3_000, 'libvirt', 'started', { event: 'Started', reason: 'Booted' }),
    mk('A', 11, T + 30 * S, 20 * S, 'libvirt', 'panicked', { event: 'Crashed', reason: 'Panicked' }), // sent after an outage
    mk('A', 12, T + 30.1 * S, 40_000, 'libvirt', 'crashed', { event: 'Stopped', reason: 'Crashed' }),
    mk('B', 7, T + 31 * S, 4_000, 'libvirt', 'started', { event: 'Started', reason: 'Booted' }),
  ];

  it("puts each host's clock on the bus's by its quickest publish", () => {
    const c = hostClocks(events);
    expect(c.get('A')!.offsetUs).toBe(5 * S + 3_000);
    expect(c.get('B')!.offsetUs).toBe(-2 * S + 4_000);
    expect(c.get('A')!.events).toBe(3);
  });

  it('shows both hosts in one timeline, in the order things happened, and says each clock', () => {
    const r = fleetAnalyze(events, { vm: 'web', last: true, windowUs: 120 * S });
    const lines = r.analysis.timeline.map((t) => t.description.slice(0, 3));
    expect(lines).toEqual(['[A]', '[A]', '[A]', '[B]']);
    const times = r.analysis.timeline.map((t) => t.timeUs);
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    expect(r.hosts.map((h) => h.host)).toEqual(['A', 'B']);
    const text = analysisText(r.analysis) + hostsText(r.hosts);
    expect(text).toMatch(/A: 3 events.*bus − host clock ≤ \+5003\.000 ms/);
    expect(text).toMatch(/B: 1 event,.*bus − host clock ≤ -1996\.000 ms/);
    expect(r.analysis.verdicts.length).toBeGreaterThan(0);
  });

  it('the in-memory source answers the queries analyze makes', () => {
    const src = new ArraySource(events.map((e) => ({ ...e, id: e.streamSeq, source: null, disposition: 'notify' as const })));
    expect(src.query({ vm: 'web', order: 'desc', limit: 1 }).map((e) => e.event)).toEqual(['started']);
    expect(src.query({ kinds: [{ plugin: 'libvirt', event: 'crashed' }] }).length).toBe(1);
    expect(src.query({ vm: 'other' })).toEqual([]);
  });
});
