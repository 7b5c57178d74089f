// The config file: defaults, every key and its type, all mistakes reported at once with their
// positions, unknown keys with a suggestion, YAML syntax errors, the example file; and the
// duration and size parsers.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG_PATH, loadConfig, parseConfig } from '../../host/config/load.js';
import { defaultConfig, type Config } from '../../host/config/schema.js';
import { parseDuration, parseSize } from '../../host/config/units.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

const EXAMPLE = resolve(import.meta.dirname, '../../host/config/vesper.example.yaml');

const DEFAULTS: Config = {
  daemon: { socket: '/run/vesper/vesperd.sock', group: 'vesper', logLevel: 'info' },
  libvirt: { uri: 'qemu:///system', channel: 'org.vesper.agent.0', domains: ['*'] },
  store: {
    path: '/var/lib/vesper/events.db',
    sync: 'full',
    retention: { maxAge: 30 * 86_400_000, maxSize: 1024 ** 3, vmShare: 0.5 },
  },
  channel: {
    keepalive: 1000,
    reconnectMin: 200,
    reconnectMax: 10_000,
    ingest: { recordsPerS: 100_000, bytesPerS: 32 * 1024 ** 2, burst: 1000 },
    readCoalesce: 20,
    resumeGrace: 10_000,
  },
  actions: { execTimeout: 30_000, rateLimit: { max: 3, per: 600_000 }, fenceLockDir: '/var/lib/vesper/fence', requireLockManager: true },
  filters: [],
  attach: [],
  ssh: { targets: {}, connectTimeout: 15_000, keepalive: 5000, keepaliveCountMax: 3 },
  metrics: { listen: { kind: 'off' } },
  sinks: [],
};

/** The VesperError parseConfig throws for `text`. */
function mistakes(text: string, file = 'vesper.yaml'): VesperError {
  try {
    parseConfig(text, file);
  } catch (err) {
    expect(err).toBeInstanceOf(VesperError);
    expect((err as VesperError).code).toBe(ErrorCode.CONFIG_INVALID);
    return err as VesperError;
  }
  throw new Error('expected the config to be refused');
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-config-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('defaults', () => {
  it('an empty file, a comment-only file and {} are all defaults', () => {
    expect(parseConfig('', 'x')).toEqual(DEFAULTS);
    expect(parseConfig('# nothing here\n', 'x')).toEqual(DEFAULTS);
    expect(parseConfig('{}\n', 'x')).toEqual(DEFAULTS);
    expect(defaultConfig()).toEqual(DEFAULTS);
    expect(DEFAULT_CONFIG_PATH).toBe('/etc/vesper/vesper.yaml');
  });

  it('a section given in part keeps the defaults of the rest', () => {
    const c = parseConfig('store:\n  retention:\n    max_age: 7d\nactions:\n  rate_limit:\n    max: 5\n', 'x');
    expect(c.store).toEqual({ ...DEFAULTS.store, retention: { maxAge: 7 * 86_400_000, maxSize: 1024 ** 3, vmShare: 0.5 } });
    expect(c.actions.rateLimit).toEqual({ max: 5, per: 600_000 });
    expect(c.daemon).toEqual(DEFAULTS.daemon);
  });

  it('a missing file at the default path is all defaults; at a path that was given, an error', () => {
    const missing = join(dir, 'nope.yaml');
    expect(loadConfig(undefined, { defaultPath: missing })).toEqual(DEFAULTS);
    const err = (() => {
      try {
        loadConfig(missing);
      } catch (e) {
        return e as VesperError;
      }
      return null;
    })();
    expect(err?.code).toBe(ErrorCode.CONFIG_INVALID);
    expect(err?.message).toBe(`${missing}: cannot read the config file: no such file`);
  });

  it('loads a file from disk, mistakes named after it', () => {
    const file = join(dir, 'vesper.yaml');
    writeFileSync(file, 'daemon:\n  log_level: debug\n');
    expect(loadConfig(file).daemon.logLevel).toBe('debug');
    writeFileSync(file, 'daemon:\n  log_level: loud\n');
    expect(() => loadConfig(file)).toThrow(`${file}:2:14: daemon.log_level: must be one of info, debug, warn, error, got "loud"`);
  });
});

describe('every key', () => {
  it('takes values of each type, converted for the host (camelCase, ms, bytes, strings for params)', () => {
    const c = parseConfig(
      `daemon:
  socket: /tmp/v/api.sock
  group: wheel
  log_level: warn
libvirt:
  uri: qemu+ssh://root@h1/system
  channel: org.example.port.1
  domains: ['db*', 'web-?']
store:
  path: /srv/vesper/events.db
  sync: normal
  retention:
    max_age: 1h30m
    max_size: 64MiB
    max_vm_share: 0.25
channel:
  keepalive: 500ms
  reconnect_min: 1s
  reconnect_max: 2m
  read_coalesce: 0ms
  resume_grace: 4s
  ingest: { records_per_s: 30000, bytes_per_s: 8MiB, burst: 250ms }
actions:
  exec_timeout: 1.5s
  rate_limit: { max: 10, per: 1h }
  fence_lock_dir: /mnt/shared/fence
  standby_uri: qemu+tls://standby/system
  require_lock_manager: false
filters:
  - plugin: signal
    event: signal
    decision: notify
  - vm: db1
    plugin: libvirt
    instance: 0
    event: crashed
    decision: action
    action: failover
    args: [--standby-name, db1-b]
  - vm: ''
    plugin: '*'
    event: '*'
    decision: discard
  - plugin: oom
    event: oom_kill
    decision: action
    action: exec
    args: [/usr/local/bin/page-me, '--level', '2']
attach:
  - vm: '*'
    probes:
      - name: signal
      - name: psi
        instances: 2
        params: { threshold_us: 50000, resource: io, verbose: true }
`,
      'full.yaml',
    );
    expect(c).toEqual({
      daemon: { socket: '/tmp/v/api.sock', group: 'wheel', logLevel: 'warn' },
      libvirt: { uri: 'qemu+ssh://root@h1/system', channel: 'org.example.port.1', domains: ['db*', 'web-?'] },
      store: { path: '/srv/vesper/events.db', sync: 'normal', retention: { maxAge: 5_400_000, maxSize: 64 * 1024 ** 2, vmShare: 0.25 } },
      channel: {
        keepalive: 500,
        reconnectMin: 1000,
        reconnectMax: 120_000,
        ingest: { recordsPerS: 30_000, bytesPerS: 8 * 1024 ** 2, burst: 250 },
        readCoalesce: 0,
        resumeGrace: 4000,
      },
      actions: {
        execTimeout: 1500,
        rateLimit: { max: 10, per: 3_600_000 },
        fenceLockDir: '/mnt/shared/fence',
        standbyUri: 'qemu+tls://standby/system',
        requireLockManager: false,
      },
      filters: [
        { vm: '*', plugin: 'signal', instance: '*', event: 'signal', decision: { kind: 'notify' } },
        {
          vm: 'db1',
          plugin: 'libvirt',
          instance: 0,
          event: 'crashed',
          decision: { kind: 'action', action: 'failover', args: ['--standby-name', 'db1-b'] },
        },
        { vm: '', plugin: '*', instance: '*', event: '*', decision: { kind: 'discard' } },
        {
          vm: '*',
          plugin: 'oom',
          instance: '*',
          event: 'oom_kill',
          decision: { kind: 'action', action: 'exec', args: ['/usr/local/bin/page-me', '--level', '2'] },
        },
      ],
      attach: [
        {
          vm: '*',
          probes: [
            { name: 'signal', instances: 1, params: {} },
            { name: 'psi', instances: 2, params: { threshold_us: '50000', resource: 'io', verbose: 'true' } },
          ],
        },
      ],
      ssh: DEFAULTS.ssh,
      metrics: DEFAULTS.metrics,
      sinks: [],
    });
  });

  it('metrics.listen: off, HOST:PORT ([v6]:PORT) or a unix socket path; anything else is a mistake at its line', () => {
    expect(parseConfig('metrics: { listen: 127.0.0.1:9477 }\n', 'x').metrics.listen).toEqual({
      kind: 'tcp',
      host: '127.0.0.1',
      port: 9477,
    });
    expect(parseConfig('metrics: { listen: "[::1]:9477" }\n', 'x').metrics.listen).toEqual({ kind: 'tcp', host: '::1', port: 9477 });
    expect(parseConfig('metrics: { listen: /run/vesper/metrics.sock }\n', 'x').metrics.listen).toEqual({
      kind: 'unix',
      path: '/run/vesper/metrics.sock',
    });
    expect(parseConfig('metrics: { listen: off }\n', 'x').metrics.listen).toEqual({ kind: 'off' });
    expect(mistakes('daemon: {}\nmetrics:\n  listen: 9477\n').message).toBe(
      "vesper.yaml:3:11: metrics.listen: must be off, HOST:PORT (127.0.0.1:9477, [::1]:9477) or a unix socket's absolute path, got 9477",
    );
    expect(mistakes('metrics:\n  listen: localhost:99999\n').message).toContain('vesper.yaml:2:11: metrics.listen: must be off, HOST:PORT');
  });

  it('a size may be a plain number of bytes', () => {
    expect(parseConfig('store:\n  retention:\n    max_size: 1048576\n', 'x').store.retention.maxSize).toBe(1_048_576);
  });
});

describe('mistakes', () => {
  it('every mistake of a file, one line each, at its line and column, in file order', () => {
    const err = mistakes(
      [
        /*  1 */ 'daemon:',
        /*  2 */ '  socket: run/vesperd.sock',
        /*  3 */ '  log_level: verbose',
        /*  4 */ 'store:',
        /*  5 */ '  sync: fast',
        /*  6 */ '  retention:',
        /*  7 */ '    max_age: 30',
        /*  8 */ '    max_size: 2 parsecs',
        /*  9 */ 'channel:',
        /* 10 */ '  keepalive: soon',
        /* 11 */ 'actions:',
        /* 12 */ '  exec_timeout: 0s',
        /* 13 */ '  rate_limit:',
        /* 14 */ '    max: 2.5',
        /* 15 */ 'filters:',
        /* 16 */ '  - plugin: signal',
        /* 17 */ '    decision: maybe',
        /* 18 */ '  - plugin: oom',
        /* 19 */ '    event: oom_kill',
        /* 20 */ '    instance: first',
        /* 21 */ '    decision: action',
        /* 22 */ '    action: exec',
        /* 23 */ 'attach:',
        /* 24 */ '  - vm: web',
        /* 25 */ '    probes:',
        /* 26 */ '      - name: signal',
        /* 27 */ '        instances: 0',
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:2:11: daemon.socket: must be the API socket path (an absolute path, starting with /), got "run/vesperd.sock"',
      'vesper.yaml:3:14: daemon.log_level: must be one of info, debug, warn, error, got "verbose"',
      'vesper.yaml:5:9: store.sync: must be one of full, normal, got "fast"',
      'vesper.yaml:7:14: store.retention.max_age: must be a duration like 500ms, 10s, 5m, 2h, 30d or 1h30m, got 30',
      'vesper.yaml:8:15: store.retention.max_size: "2 parsecs" is not a size like 512KiB, 64MiB, 1GiB, 1GB, or a number of bytes',
      'vesper.yaml:10:14: channel.keepalive: "soon" is not a duration like 500ms, 10s, 5m, 2h, 30d or 1h30m',
      'vesper.yaml:12:17: actions.exec_timeout: must be at least 1 ms, got "0s"',
      'vesper.yaml:14:10: actions.rate_limit.max: must be a whole number >= 1, got 2.5',
      "vesper.yaml:16:5: filters[0].event: missing: must be an event name or '*'",
      'vesper.yaml:17:15: filters[0].decision: must be one of notify, discard, action, got "maybe"',
      `vesper.yaml:20:15: filters[1].instance: must be '*' or a whole number >= 0, got "first"`,
      'vesper.yaml:22:13: filters[1].action: exec needs the program to run: exec PATH [ARG...]',
      'vesper.yaml:27:20: attach[0].probes[0].instances: must be a whole number >= 1, got 0',
    ]);
  });

  it('unknown keys, at the key, with the nearest known key when there is one', () => {
    const err = mistakes(
      [
        'daemon:',
        '  loglevel: debug',
        'libvirt:',
        '  url: qemu:///system',
        'stroe:',
        '  path: /x',
        'filters:',
        '  - plugin: a',
        '    event: b',
        '    decison: notify',
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:2:3: daemon.loglevel: unknown key (did you mean "log_level"?); allowed here: socket, group, log_level',
      'vesper.yaml:4:3: libvirt.url: unknown key (did you mean "uri"?); allowed here: uri, channel, domains',
      'vesper.yaml:5:1: stroe: unknown key (did you mean "store"?); allowed here: daemon, libvirt, store, channel, actions, filters, attach, pacemaker, ssh, metrics, sinks',
      'vesper.yaml:8:5: filters[0].decision: missing: must be one of notify, discard, action',
      'vesper.yaml:10:5: filters[0].decison: unknown key (did you mean "decision"?); allowed here: vm, plugin, instance, event, decision, action, args',
    ]);
    const far = mistakes('daemon:\n  colour: blue\n');
    expect(far.message).toBe('vesper.yaml:2:3: daemon.colour: unknown key; allowed here: socket, group, log_level');
  });

  it('a wrong enum value close to a right one gets a suggestion', () => {
    expect(mistakes('filters:\n  - plugin: a\n    event: b\n    decision: notfy\n').message).toBe(
      'vesper.yaml:4:15: filters[0].decision: must be one of notify, discard, action (did you mean "notify"?), got "notfy"',
    );
  });

  it('filter actions are checked as the runner would, with the decision', () => {
    const err = mistakes(
      [
        'filters:',
        '  - { plugin: a, event: b, decision: action, action: restrat }',
        '  - { plugin: a, event: b, decision: action, action: failover, args: [--standby-name, x] }',
        '  - { plugin: a, event: b, decision: action, action: restart, args: [--now] }',
        '  - { plugin: a, event: b, decision: notify, action: restart }',
        '  - { plugin: a, event: b, decision: action }',
        '  - { plugin: a, event: b, decision: action, action: exec, args: [relative/x.sh] }',
        '  - { plugin: a, event: b, decision: action, action: exec, args: [/bin/x, 3] }',
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:2:54: filters[0].action: unknown action "restrat" (did you mean "restart"?); allowed: exec, restart, failover, pacemaker-fail, pacemaker-attr',
      'vesper.yaml:3:70: filters[1].args: failover needs a standby: --standby-uri URI in args, or actions.standby_uri',
      'vesper.yaml:4:69: filters[2].args: restart takes no arguments, got ["--now"]',
      "vesper.yaml:5:54: filters[3].action: only goes with decision: action (this rule's decision is notify)",
      'vesper.yaml:6:5: filters[4].action: missing: decision: action needs an action (exec, restart, failover, pacemaker-fail, pacemaker-attr)',
      'vesper.yaml:7:66: filters[5].args: exec: "relative/x.sh" is a relative path; give an absolute path (or a bare name looked up in PATH)',
      'vesper.yaml:8:75: filters[6].args[1]: must be a string (quote numbers), got 3',
    ]);
    // with a default standby, failover without --standby-uri is fine
    expect(
      parseConfig(
        'actions:\n  standby_uri: qemu+ssh://b/system\nfilters:\n  - { plugin: a, event: b, decision: action, action: failover }\n',
        'x',
      ).filters[0]!.decision,
    ).toEqual({ kind: 'action', action: 'failover', args: [] });
  });

  it('read_coalesce over 200ms is a mistake: it is added to every event under load', () => {
    expect(mistakes('channel:\n  read_coalesce: 1s\n').message).toBe(
      'vesper.yaml:2:18: channel.read_coalesce: must be at most 200ms: it is added to the latency of every event under load, got "1s"',
    );
  });

  it('an ingest budget and a VM share out of range are mistakes; 0 turns the budget off', () => {
    const err = mistakes(
      'store:\n  retention:\n    max_vm_share: 0\nchannel:\n  ingest:\n    records_per_s: 10\n    bytes_per_s: 4KiB\n    burst: 0ms\n',
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:3:19: store.retention.max_vm_share: must be a number above 0 and at most 1 (a share of the store, e.g. 0.5), got 0',
      'vesper.yaml:6:20: channel.ingest.records_per_s: must be a whole number >= 1000, or 0 for no limit',
      'vesper.yaml:7:18: channel.ingest.bytes_per_s: must be at least 1MiB, or 0 for no limit; got "4KiB"',
      'vesper.yaml:8:12: channel.ingest.burst: must be at least 1 ms, got "0ms"',
    ]);
    expect(mistakes('store:\n  retention:\n    max_vm_share: 1.5\n').message).toContain('at most 1');
    const off = parseConfig('channel:\n  ingest: { records_per_s: 0, bytes_per_s: 0 }\n', 'x').channel.ingest;
    expect(off).toEqual({ recordsPerS: 0, bytesPerS: 0, burst: 1000 });
  });

  it('reconnect_min longer than reconnect_max is a mistake, reported with the others', () => {
    const err = mistakes('daemon:\n  group: ""\nchannel:\n  reconnect_min: 30s\n');
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:2:10: daemon.group: must be a group name, not empty, got ""',
      'vesper.yaml:4:18: channel.reconnect_min: reconnect_min (30000 ms) must not be longer than reconnect_max (10000 ms)',
    ]);
  });

  it('wrong shapes: a list for a section, a scalar for a list, an empty value, a top level that is not a mapping', () => {
    expect(mistakes('daemon: [1, 2]\nfilters: none\nstore:\n  path:\n').message.split('\n')).toEqual([
      'vesper.yaml:1:9: daemon: must be a mapping (keys: socket, group, log_level), got a list',
      'vesper.yaml:2:10: filters: must be a list of filter rules, got "none"',
      'vesper.yaml:4:3: store.path: must be the event database file (an absolute path), got null (an empty value)',
    ]);
    expect(mistakes('- a\n- b\n').message).toBe(
      'vesper.yaml:1:1: (top level): must be a mapping of sections (daemon, libvirt, store, channel, actions, filters, attach, pacemaker, ssh, metrics, sinks)',
    );
  });
});

describe('the pacemaker section', () => {
  it('is absent unless the file has it; `pacemaker: {}` is every default', () => {
    expect(parseConfig('', 'x').pacemaker).toBeUndefined();
    expect(parseConfig('pacemaker: {}\n', 'x').pacemaker).toEqual({
      vms: {},
      healthAttribute: 'vesper-health',
      toolsTimeout: 10_000,
      alertSocket: '/run/vesper-pacemaker/alert.sock',
      alertGroup: 'haclient',
    });
  });

  it('takes the VM mapping and every key', () => {
    const c = parseConfig(
      [
        'pacemaker:',
        '  vms:',
        '    web1: { resource: vm-web1, node: node1 }',
        '    db-1.example: { resource: _vm.db:1 }',
        '  node: node2',
        "  health_attribute: '#health-vesper'",
        '  tools_timeout: 2500ms',
        '  alert_socket: /run/x/alert.sock',
        '  alert_group: cluster',
        'filters:',
        '  - { vm: web1, plugin: channel, event: heartbeat-lost, decision: action, action: pacemaker-fail }',
        "  - { vm: '', plugin: '*', event: '*', decision: action, action: pacemaker-attr, args: [--value, '0'] }",
        "  - { vm: '*', plugin: libvirt, event: crashed, decision: action, action: pacemaker-fail }",
        '  - { vm: db9, plugin: libvirt, event: crashed, decision: action, action: pacemaker-fail, args: [--resource, vm-db9] }',
        '',
      ].join('\n'),
      'x',
    );
    expect(c.pacemaker).toEqual({
      vms: { web1: { resource: 'vm-web1', node: 'node1' }, 'db-1.example': { resource: '_vm.db:1' } },
      node: 'node2',
      healthAttribute: '#health-vesper',
      toolsTimeout: 2500,
      alertSocket: '/run/x/alert.sock',
      alertGroup: 'cluster',
    });
    expect(c.filters.map((f) => f.decision)).toEqual([
      { kind: 'action', action: 'pacemaker-fail', args: [] },
      { kind: 'action', action: 'pacemaker-attr', args: ['--value', '0'] },
      { kind: 'action', action: 'pacemaker-fail', args: [] },
      { kind: 'action', action: 'pacemaker-fail', args: ['--resource', 'vm-db9'] },
    ]);
  });

  it('every mistake, one line each, at its place', () => {
    const err = mistakes(
      [
        /*  1 */ 'pacemaker:',
        /*  2 */ '  vms:',
        /*  3 */ '    web1: vm-web1',
        /*  4 */ "    web2: { resource: '-x', nodes: n1 }",
        /*  5 */ "    '*': { resource: a }",
        /*  6 */ '    db1: { node: n1 }',
        /*  7 */ '    db2: { resource: vm-db2, node: a b }',
        /*  8 */ "  node: '-N'",
        /*  9 */ "  health_attribute: 'a b'",
        /* 10 */ '  tools_timeout: 0s',
        /* 11 */ '  alert_socket: run/alert.sock',
        /* 12 */ "  alert_group: ''",
        /* 13 */ '  alert: yes',
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:3:11: pacemaker.vms.web1: must be a VM\'s Pacemaker resource (keys: resource, node), got "vm-web1"',
      `vesper.yaml:4:23: pacemaker.vms.web2.resource: must be a Pacemaker resource id (letters, digits, '_', '.', ':', '-'; a letter or '_' first), got "-x"`,
      'vesper.yaml:4:29: pacemaker.vms.web2.nodes: unknown key (did you mean "node"?); allowed here: resource, node',
      'vesper.yaml:5:5: pacemaker.vms.*: must be a VM\'s libvirt domain name, got "*"',
      'vesper.yaml:6:10: pacemaker.vms.db1.resource: missing: must be a Pacemaker resource id',
      `vesper.yaml:7:36: pacemaker.vms.db2.node: must be a Pacemaker node name (letters, digits, '_', '.', '-'; not '-' first), got "a b"`,
      `vesper.yaml:8:9: pacemaker.node: must be a Pacemaker node name (letters, digits, '_', '.', '-'; not '-' first), got "-N"`,
      `vesper.yaml:9:21: pacemaker.health_attribute: must be a node attribute name (letters, digits, '_', '.', ':', '#', '-'; not '-' first), got "a b"`,
      'vesper.yaml:10:18: pacemaker.tools_timeout: must be at least 1 ms, got "0s"',
      'vesper.yaml:11:17: pacemaker.alert_socket: must be the alert agent\'s socket path (an absolute path, starting with /), got "run/alert.sock"',
      'vesper.yaml:12:16: pacemaker.alert_group: must be a group name, not empty, got ""',
      'vesper.yaml:13:3: pacemaker.alert: unknown key; allowed here: vms, node, health_attribute, tools_timeout, alert_socket, alert_group',
    ]);
    expect(mistakes('pacemaker: [web1]\n').message).toBe(
      'vesper.yaml:1:12: pacemaker: must be a mapping (keys: vms, node, health_attribute, tools_timeout, alert_socket, alert_group), got a list',
    );
    expect(mistakes('pacemaker:\n  vms: [web1]\n').message).toBe(
      'vesper.yaml:2:8: pacemaker.vms: must be a mapping of VM names to { resource, node }, got a list',
    );
  });

  it('one resource for two VMs is a mistake: its alerts could go to either', () => {
    expect(mistakes('pacemaker:\n  vms:\n    web1: { resource: vm-web }\n    web2: { resource: vm-web }\n').message).toBe(
      "vesper.yaml:4:23: pacemaker.vms.web2.resource: resource vm-web is already web1's; a resource belongs to one VM (its alerts become that VM's events)",
    );
  });

  it('filters whose pacemaker actions could never run', () => {
    const err = mistakes(
      [
        'pacemaker:',
        '  vms:',
        '    web1: { resource: vm-web1 }',
        'filters:',
        '  - { vm: db1, plugin: libvirt, event: crashed, decision: action, action: pacemaker-fail }',
        "  - { vm: '', plugin: '*', event: '*', decision: action, action: pacemaker-fail, args: [--resource, x] }",
        '  - { plugin: a, event: b, decision: action, action: pacemaker-fail, args: [--resource, -x] }',
        '  - { plugin: a, event: b, decision: action, action: pacemaker-attr, args: [--value] }',
        '  - { plugin: a, event: b, decision: action, action: pacemaker-fial }',
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:5:75: filters[0].action: pacemaker-fail needs the resource of db1: --resource RSC in args, or pacemaker.vms.db1.resource in the config',
      "vesper.yaml:6:11: filters[1].vm: pacemaker-fail needs a VM; a rule for the host ('') cannot use it (pacemaker-attr can)",
      `vesper.yaml:7:76: filters[2].args: pacemaker-fail: --resource "-x" is not a Pacemaker resource id (letters, digits, '_', '.', ':', '-'; a letter or '_' first)`,
      'vesper.yaml:8:76: filters[3].args: pacemaker-attr: --value needs a value',
      'vesper.yaml:9:54: filters[4].action: unknown action "pacemaker-fial" (did you mean "pacemaker-fail"?); allowed: exec, restart, failover, pacemaker-fail, pacemaker-attr',
    ]);
  });
});

describe('YAML syntax errors', () => {
  it('one line each, with the position, and nothing else', () => {
    const err = mistakes('daemon:\n  socket: [unclosed\nstore:\n  sync: full\n', 'bad.yaml');
    const lines = err.message.split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^bad\.yaml:3:1: YAML syntax: Flow sequence in block collection must be sufficiently indented and end with a \]$/,
    );
  });

  it('duplicate keys and tabs are syntax errors too', () => {
    expect(mistakes('daemon:\n  group: a\n  group: b\n').message).toMatch(/^vesper\.yaml:3:3: YAML syntax: Map keys must be unique$/);
    expect(mistakes('daemon:\n\tgroup: a\n').message).toMatch(/^vesper\.yaml:2:1: YAML syntax: /);
  });

  it('an alias to nothing is refused with a position', () => {
    expect(mistakes('daemon: *nothing\n').message).toMatch(/^vesper\.yaml:1:1: YAML: .*nothing/);
  });
});

describe('the example file', () => {
  const text = readFileSync(EXAMPLE, 'utf8');

  it('is the defaults, every key present', () => {
    expect(parseConfig(text, EXAMPLE)).toEqual(DEFAULTS);
    for (const key of [
      'socket:',
      'group:',
      'log_level:',
      'uri:',
      'channel:',
      'path:',
      'sync:',
      'retention:',
      'max_age:',
      'max_size:',
      'keepalive:',
      'reconnect_min:',
      'reconnect_max:',
      'max_vm_share:',
      'ingest:',
      'records_per_s:',
      'bytes_per_s:',
      'burst:',
      'exec_timeout:',
      'rate_limit:',
      'max:',
      'per:',
      'fence_lock_dir:',
      'standby_uri:',
      'filters:',
      'attach:',
      'pacemaker:',
      'vms:',
      'node:',
      'health_attribute:',
      'tools_timeout:',
      'alert_socket:',
      'alert_group:',
      'ssh:',
      'connect_timeout:',
      'keepalive_count_max:',
      'targets:',
      'target:',
      'key:',
      'known_hosts:',
      'fingerprint:',
      'password_env:',
      'prefix:',
      'run_dir:',
      'sinks:',
    ])
      expect(text, key).toContain(key);
  });

  it('its commented-out examples are valid when uncommented', () => {
    // `#filters:` / `#attach:` blocks replace the `filters: []` / `attach: []` lines
    const lines = text.split('\n');
    const out: string[] = [];
    let inBlock = false;
    for (const line of lines) {
      if (line === 'filters: []' || line === 'attach: []' || line === 'sinks: []' || line === '  targets: {}') continue;
      if (line === '#  targets:') {
        inBlock = true;
        out.push(line.slice(1));
        continue;
      }
      if (/^#(filters|attach|pacemaker|sinks|standby_uri):/.test(line) || /^ {2}#standby_uri:/.test(line)) {
        inBlock = !line.startsWith('  ');
        out.push(line.replace('#', ''));
        continue;
      }
      if (inBlock && line.startsWith('#  ')) {
        out.push(line.slice(1));
        continue;
      }
      inBlock = false;
      out.push(line);
    }
    const c = parseConfig(out.join('\n'), EXAMPLE);
    expect(c.filters).toHaveLength(4);
    expect(c.filters[1]!.decision).toMatchObject({ kind: 'action', action: 'failover' });
    expect(c.filters[3]!.decision).toMatchObject({ kind: 'action', action: 'pacemaker-fail' });
    expect(c.attach[0]!.probes.map((p) => p.name)).toEqual(['signal', 'oom', 'heartbeat']);
    expect(c.actions.standbyUri).toBe('qemu+ssh://standby.example/system');
    expect(c.sinks.map((s) => [s.name, s.kind])).toEqual([
      ['tickets', 'webhook'],
      ['archive', 'file'],
      ['siem', 'syslog'],
    ]);
    expect(c.sinks[1]!.params).toEqual({ path: '/var/log/vesper/events.ndjson', max_size: 100 * 1024 ** 2, keep: 5 });
    expect(c.sinks[1]!.run.start).toBe('oldest');
    expect(c.pacemaker).toEqual({
      vms: { web1: { resource: 'vm-web1' }, db1: { resource: 'vm-db1', node: 'node1' } },
      node: 'node1',
      healthAttribute: 'vesper-health',
      toolsTimeout: 10_000,
      alertSocket: '/run/vesper-pacemaker/alert.sock',
      alertGroup: 'haclient',
    });
    expect(c.ssh.targets).toEqual({
      web3: {
        target: 'root@web3.example:22',
        key: '/etc/vesper/ssh/id_ed25519',
        knownHosts: '/etc/vesper/ssh/known_hosts',
        prefix: '/opt/vesper-agent',
        runDir: '/run/vesper-agent',
      },
      db3: {
        target: 'vesper@10.0.0.7',
        fingerprint: 'SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s',
        passwordEnv: 'VESPER_DB3_PASSWORD',
        prefix: '/opt/vesper-agent',
        runDir: '/run/vesper-agent',
      },
    });
  });
});

describe('the ssh section', () => {
  it('targets with their defaults, camelCase', () => {
    const c = parseConfig('ssh:\n  keepalive: 2s\n  targets:\n    web1: { target: root@127.0.0.1:2222, key: /k, known_hosts: /kh }\n', 'x');
    expect(c.ssh).toEqual({
      targets: {
        web1: { target: 'root@127.0.0.1:2222', key: '/k', knownHosts: '/kh', prefix: '/opt/vesper-agent', runDir: '/run/vesper-agent' },
      },
      connectTimeout: 15_000,
      keepalive: 2000,
      keepaliveCountMax: 3,
    });
  });

  it('every mistake, one line each, at its place; a password is refused without being repeated', () => {
    const err = mistakes(
      [
        /*  1 */ 'ssh:',
        /*  2 */ '  connect_timeout: 10',
        /*  3 */ '  keepalive_count_max: 0',
        /*  4 */ '  targets:',
        /*  5 */ '    web1: { target: root@h:99999 }',
        /*  6 */ '    web2: { target: root@h, key: id_rsa, known_host: /kh }',
        /*  7 */ '    web3: { target: root@h, fingerprint: MD5:aa }',
        /*  8 */ '    web4: { target: root@h, password: hunter2 }',
        /*  9 */ "    web5: { target: root@h, password_env: 'MY PW', prefix: opt }",
        /* 10 */ '    web6: { key: /k }',
        /* 11 */ "    '*': { target: root@h }",
        '',
      ].join('\n'),
    );
    expect(err.message.split('\n')).toEqual([
      'vesper.yaml:2:20: ssh.connect_timeout: must be a duration like 500ms, 10s, 5m, 2h, 30d or 1h30m, got 10',
      'vesper.yaml:3:24: ssh.keepalive_count_max: must be a whole number >= 1, got 0',
      'vesper.yaml:5:21: ssh.targets.web1.target: must be an SSH target user@host[:port] (port 1-65535), got "root@h:99999"',
      'vesper.yaml:6:34: ssh.targets.web2.key: must be the private key file (an absolute path, starting with /), got "id_rsa"',
      'vesper.yaml:6:42: ssh.targets.web2.known_host: unknown key (did you mean "known_hosts"?); allowed here: target, key, known_hosts, fingerprint, password, password_env, prefix, run_dir',
      'vesper.yaml:7:42: ssh.targets.web3.fingerprint: must be a host key fingerprint SHA256:… (as ssh-keygen -lf prints it: 43 base64 characters), got "MD5:aa"',
      'vesper.yaml:8:29: ssh.targets.web4.password: a password does not belong in the config file: put it in an environment variable and name that in password_env',
      'vesper.yaml:9:43: ssh.targets.web5.password_env: must be an environment variable name (letters, digits, _), got "MY PW"',
      'vesper.yaml:9:60: ssh.targets.web5.prefix: must be the agent\'s directory on the target (an absolute path, starting with /), got "opt"',
      'vesper.yaml:10:11: ssh.targets.web6.target: missing: must be an SSH target user@host[:port]',
      'vesper.yaml:11:5: ssh.targets.*: must be a VM name (letters, digits and . _ + - :), got "*"',
    ]);
    expect(err.message).not.toContain('hunter2');
  });
});

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['10s', 10_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['30d', 2_592_000_000],
    ['1h30m', 5_400_000],
    ['1.5s', 1500],
    ['0s', 0],
    [' 1s ', 1000],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', '10', '10 s', 's', '10x', '1h 30m', '-1s', '1e3s', 'ms10'])('refuses %j', (text) => {
    expect(() => parseDuration(text)).toThrow(RangeError);
  });

  it('says what is allowed', () => {
    expect(() => parseDuration('10')).toThrow('"10" has no unit: write a duration like 500ms, 10s, 5m, 2h, 30d or 1h30m');
  });
});

describe('parseSize', () => {
  it.each([
    ['512KiB', 512 * 1024],
    ['64MiB', 64 * 1024 ** 2],
    ['1GiB', 1024 ** 3],
    ['1GB', 1e9],
    ['2TiB', 2 * 1024 ** 4],
    ['10kB', 10_000],
    ['100B', 100],
    ['4096', 4096],
    ['1.5KiB', 1536],
    ['1 GiB', 1024 ** 3],
    ['1gib', 1024 ** 3],
  ])('%j is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it('takes a number of bytes as a number', () => {
    expect(parseSize(1234)).toBe(1234);
    expect(() => parseSize(1.5)).toThrow(RangeError);
    expect(() => parseSize(-1)).toThrow(RangeError);
  });

  it.each(['', 'GiB', '1 parsec', '1PiB', '-1KiB', '1e3B'])('refuses %j', (text) => {
    expect(() => parseSize(text)).toThrow(RangeError);
  });
});
