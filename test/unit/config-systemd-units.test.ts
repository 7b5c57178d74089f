// The shipped systemd units and udev rule, read as systemd would read their keys: the daemon's
// unit (Type=notify with a watchdog and SIGHUP reload, restarts, directories, libvirt ordering, hardening that leaves libvirt and
// Node working) and the guest agent's, bound to its virtio-serial port's device unit, whose
// name must be the path escaped exactly as systemd escapes it (checked against
// `systemd-escape --path` where that exists).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS } from '../../contract/node-flags.js';

const ROOT = resolve(import.meta.dirname, '../..');
const DAEMON_UNIT = resolve(ROOT, 'host/systemd/vesperd.service');
const AGENT_UNIT = resolve(ROOT, 'guest-agent/systemd/vesper-agent.service');
const UDEV_RULE = resolve(ROOT, 'guest-agent/systemd/90-vesper-agent.rules');
const PORT = 'org.vesper.agent.0';

type Unit = Map<string, Map<string, string[]>>;

/** systemd's unit file syntax, as far as these files need it: sections, key=value, comments, continuations. */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | null = null;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++i]!.trim()}`;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      section = unit.get(header[1]!) ?? new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const kv = /^([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)$/.exec(line);
    if (!kv || !section) throw new Error(`line ${i + 1}: not a key=value inside a section: ${line}`);
    section.set(kv[1]!, [...(section.get(kv[1]!) ?? []), kv[2]!]);
  }
  return unit;
}

/** The one value of a key (fails when it is missing or given twice). */
function one(unit: Unit, section: string, key: string): string {
  const v = unit.get(section)?.get(key);
  expect(v, `[${section}] ${key}`).toHaveLength(1);
  return v![0]!;
}

/** All words of a key's values (list-valued keys such as After=). */
function words(unit: Unit, section: string, key: string): string[] {
  return (unit.get(section)?.get(key) ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);
}

/** systemd's path escaping (unit_name_path_escape): '/' separates, anything but [A-Za-z0-9:_.] is \xNN, a leading '.' too. */
function escapePath(path: string): string {
  const simplified = path.split('/').filter(Boolean).join('/');
  if (simplified === '') return '-';
  let out = '';
  for (const [i, ch] of [...simplified].entries()) {
    if (ch === '/') out += '-';
    else if (/[A-Za-z0-9:_]/.test(ch) || (ch === '.' && i > 0)) out += ch;
    else for (const b of Buffer.from(ch)) out += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

const systemdEscape = ['/usr/bin/systemd-escape', '/bin/systemd-escape'].find((p) => existsSync(p));

describe('device unit names', () => {
  it("escape the port's path as systemd does", () => {
    expect(escapePath(`/dev/virtio-ports/${PORT}`)).toBe('dev-virtio\\x2dports-org.vesper.agent.0');
    expect(escapePath('/dev/vport0p1')).toBe('dev-vport0p1');
    expect(escapePath('//a//b-c/.d/')).toBe('a-b\\x2dc-.d');
    expect(escapePath('/.a/b')).toBe('\\x2ea-b'); // only a dot at the very start is escaped
    expect(escapePath('/')).toBe('-');
  });

  it.runIf(systemdEscape)('agree with systemd-escape --path on this machine', () => {
    for (const p of [`/dev/virtio-ports/${PORT}`, '/dev/vport0p1', '/dev/disk/by-id/x y-z', '/a/.b/ü', '/.a/b', '//a//b-c/.d/']) {
      const theirs = execFileSync(systemdEscape!, ['--path', p], { encoding: 'utf8' }).trim();
      expect(escapePath(p), p).toBe(theirs);
    }
  });
});

describe('vesperd.service', () => {
  const unit = parseUnit(readFileSync(DAEMON_UNIT, 'utf8'));

  it('runs the daemon as a Type=notify service with a watchdog, reloaded by SIGHUP, that restarts on failure', () => {
    expect([...unit.keys()]).toEqual(['Unit', 'Service', 'Install']);
    expect(one(unit, 'Service', 'Type')).toBe('notify');
    // systemd-notify --pid sends vesperd's messages from a child process
    expect(one(unit, 'Service', 'NotifyAccess')).toBe('all');
    expect(one(unit, 'Service', 'ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one(unit, 'Service', 'WatchdogSec')).toMatch(/^\d+s$/);
    expect(one(unit, 'Service', 'ExecStart')).toBe('/usr/bin/vesper daemon');
    expect(one(unit, 'Service', 'Restart')).toBe('on-failure');
    expect(one(unit, 'Install', 'WantedBy')).toBe('multi-user.target');
  });

  it('has its runtime and state directories, and the API socket group', () => {
    expect(one(unit, 'Service', 'RuntimeDirectory')).toBe('vesper');
    expect(one(unit, 'Service', 'StateDirectory')).toBe('vesper');
    expect(one(unit, 'Service', 'Group')).toBe('vesper');
    // group may connect to the socket, others may not
    expect(Number.parseInt(one(unit, 'Service', 'UMask'), 8) & 0o070).toBe(0);
    expect(Number.parseInt(one(unit, 'Service', 'UMask'), 8) & 0o007).toBe(0o007);
    // the event store stays root's
    expect(one(unit, 'Service', 'StateDirectoryMode')).toBe('0700');
  });

  it('comes up after either libvirt flavour without pulling one in', () => {
    const after = words(unit, 'Unit', 'After');
    expect(after).toContain('libvirtd.service');
    expect(after).toContain('virtqemud.service');
    for (const key of ['Wants', 'Requires', 'BindsTo']) {
      const deps = words(unit, 'Unit', key);
      expect(deps.filter((d) => d.startsWith('libvirtd') || d.startsWith('virtqemud'))).toEqual([]);
    }
  });

  it('is hardened without breaking libvirt, ssh standbys, exec actions or V8', () => {
    const svc = unit.get('Service')!;
    expect(one(unit, 'Service', 'NoNewPrivileges')).toBe('yes');
    expect(one(unit, 'Service', 'PrivateTmp')).toBe('yes');
    expect(['yes', 'true', 'full']).toContain(one(unit, 'Service', 'ProtectSystem'));
    // qemu+ssh:// needs root's ssh keys
    expect(['read-only', 'no', 'false']).toContain(one(unit, 'Service', 'ProtectHome'));
    // V8 needs writable+executable memory
    expect(svc.get('MemoryDenyWriteExecute') ?? ['no']).toEqual(['no']);
    // libvirt is reached over unix sockets, standbys over TCP
    expect(words(unit, 'Service', 'RestrictAddressFamilies')).toEqual(expect.arrayContaining(['AF_UNIX', 'AF_INET', 'AF_INET6']));
    // nothing that hides /run/libvirt or the devices a libvirt client needs
    for (const key of ['PrivateDevices', 'PrivateNetwork', 'ProtectProc', 'DynamicUser', 'InaccessiblePaths', 'TemporaryFileSystem'])
      expect(svc.has(key), key).toBe(false);
  });
});

describe('vesper-agent.service and its udev rule', () => {
  const unit = parseUnit(readFileSync(AGENT_UNIT, 'utf8'));
  const device = `${escapePath(`/dev/virtio-ports/${PORT}`)}.device`;

  it('is bound to the port device: started when it appears, stopped when it goes', () => {
    expect(device).toBe('dev-virtio\\x2dports-org.vesper.agent.0.device');
    expect(words(unit, 'Unit', 'BindsTo')).toEqual([device]);
    expect(words(unit, 'Unit', 'After')).toContain(device);
    expect(words(unit, 'Install', 'WantedBy')).toEqual([device]);
  });

  it('runs the agent on that port, always restarted, out of the OOM killer’s reach', () => {
    expect(one(unit, 'Service', 'ExecStart')).toBe(
      `${['/usr/lib/vesper-agent/node', ...AGENT_NODE_FLAGS].join(' ')} /usr/lib/vesper-agent/vesper-agent.mjs --transport virtio:${PORT} --state-dir /var/lib/vesper-agent --state-file /run/vesper-agent/run-state`,
    );
    // the pinned host key lives in the state directory (docs/trust.md): systemd makes it, private
    expect(one(unit, 'Service', 'StateDirectory')).toBe('vesper-agent');
    expect(one(unit, 'Service', 'StateDirectoryMode')).toBe('0700');
    expect(one(unit, 'Service', 'Restart')).toBe('always');
    expect(one(unit, 'Service', 'OOMScoreAdjust')).toBe('-1000');
    expect(one(unit, 'Unit', 'StartLimitIntervalSec')).toBe('0');
  });

  it('the udev rule tags the port for systemd and wants this unit', () => {
    const rules = readFileSync(UDEV_RULE, 'utf8')
      .split('\n')
      .filter((l) => l.trim() && !l.trim().startsWith('#'));
    const rule = rules.find((l) => l.includes('SYSTEMD_WANTS'));
    expect(rule).toBeDefined();
    const parts = rule!.split(/,\s*/).map((p) => p.trim());
    expect(parts).toEqual(
      expect.arrayContaining([
        'SUBSYSTEM=="virtio-ports"',
        `ATTR{name}=="${PORT}"`,
        'TAG+="systemd"',
        'ENV{SYSTEMD_WANTS}+="vesper-agent.service"',
      ]),
    );
    expect(AGENT_UNIT.endsWith('/vesper-agent.service')).toBe(true);
    // every line is a rule of KEY op "value" pairs, or a label/goto
    for (const l of rules) expect(l).toMatch(/^(LABEL="[^"]+"|([A-Z_]+(\{[^}]+\})?(==|!=|\+=|=)"[^"]*"(,\s*|$))+)$/);
  });
});
