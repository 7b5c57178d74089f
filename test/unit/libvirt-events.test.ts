// The virsh event line parser, on lines captured from libvirt 9.0 on this project's host (the
// first group) and on lines built from the formats in libvirt's tools/virsh-domain-event.c for
// events that need a real guest or disk to cause; and the virsh supervisor, on a fake virsh.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { EventLineParser, LibvirtEvents, parseEventLine, type LibvirtEvent, type LibvirtEventsExit } from '../../host/libvirt/events.js';
import { projectRoot } from '../helpers/project-root.js';
import { waitFor } from '../helpers/wait.js';

const NOW = new Date('2030-01-01T00:00:00Z');

describe('parseEventLine: lines seen from libvirt 9.0', () => {
  it('lifecycle events, with their virsh timestamps', () => {
    const e = parseEventLine("2026-11-22 05:57:34.991+0000: event 'lifecycle' for domain 'vsp-probe': Started Booted", NOW);
    expect(e).toEqual({
      at: new Date('2026-11-22T05:57:34.991Z'),
      domain: 'vsp-probe',
      kind: 'lifecycle',
      name: 'lifecycle',
      event: 'Started',
      reason: 'Booted',
      detail: 'Started Booted',
      raw: "2026-11-22 05:57:34.991+0000: event 'lifecycle' for domain 'vsp-probe': Started Booted",
    });
    for (const [line, event, reason] of [
      ["2026-11-22 05:56:55.866+0000: event 'lifecycle' for domain 'vsp-probe': Defined Added", 'Defined', 'Added'],
      ["2026-11-22 05:56:56.253+0000: event 'lifecycle' for domain 'vsp-probe': Resumed Unpaused", 'Resumed', 'Unpaused'],
      [
        "2026-11-22 05:56:58.896+0000: event 'lifecycle' for domain 'vsp-probe': Shutdown Finished after host request",
        'Shutdown',
        'Finished after host request',
      ],
      ["2026-11-22 05:56:58.901+0000: event 'lifecycle' for domain 'vsp-probe': Stopped Destroyed", 'Stopped', 'Destroyed'],
      ["2026-11-22 05:57:39.983+0000: event 'lifecycle' for domain 'vsp-probe': Stopped Crashed", 'Stopped', 'Crashed'],
      ["2026-11-22 05:57:38.573+0000: event 'lifecycle' for domain 'vsp-probe': Suspended Paused", 'Suspended', 'Paused'],
      ["2026-11-22 05:56:58.947+0000: event 'lifecycle' for domain 'vsp-probe': Undefined Removed", 'Undefined', 'Removed'],
    ] as const) {
      expect(parseEventLine(line, NOW)).toMatchObject({ kind: 'lifecycle', domain: 'vsp-probe', event, reason });
    }
  });

  it('a guest panic is kind "panic"', () => {
    expect(parseEventLine("2026-11-22 05:57:38.573+0000: event 'lifecycle' for domain 'vsp-probe': Crashed Panicked", NOW)).toMatchObject({
      kind: 'panic',
      name: 'lifecycle',
      event: 'Crashed',
      reason: 'Panicked',
      at: new Date('2026-11-22T05:57:38.573Z'),
    });
  });

  it('watchdog fired, with its action', () => {
    expect(parseEventLine("2026-11-22 05:57:35.530+0000: event 'watchdog' for domain 'vsp-probe': none", NOW)).toMatchObject({
      kind: 'watchdog',
      domain: 'vsp-probe',
      action: 'none',
    });
  });

  it('device hot-plug and unplug, with the alias', () => {
    expect(parseEventLine("2026-11-22 05:56:56.309+0000: event 'device-added' for domain 'vsp-probe': channel1", NOW)).toMatchObject({
      kind: 'device-added',
      device: 'channel1',
    });
    expect(parseEventLine("2026-11-22 05:56:56.415+0000: event 'device-removed' for domain 'vsp-probe': channel1", NOW)).toMatchObject({
      kind: 'device-removed',
      device: 'channel1',
    });
  });
});

describe('parseEventLine: formats from virsh-domain-event.c', () => {
  it('reboot has no payload', () => {
    expect(parseEventLine("2026-11-22 06:00:00.000+0000: event 'reboot' for domain 'vm1'", NOW)).toMatchObject({
      kind: 'reboot',
      domain: 'vm1',
      name: 'reboot',
    });
  });

  it('agent lifecycle', () => {
    expect(
      parseEventLine(
        "2026-11-22 06:00:00.000+0000: event 'agent-lifecycle' for domain 'vm1': state: 'connected' reason: 'channel event'",
        NOW,
      ),
    ).toMatchObject({ kind: 'agent-lifecycle', event: 'connected', reason: 'channel event' });
  });

  it('I/O errors count once: the reason form is kind "io-error", the plain duplicate is "other"', () => {
    expect(
      parseEventLine(
        "2026-11-22 06:00:00.000+0000: event 'io-error-reason' for domain 'vm1': /var/lib/img (virtio-disk0) pause due to enospc",
        NOW,
      ),
    ).toMatchObject({ kind: 'io-error', name: 'io-error-reason', device: 'virtio-disk0', action: 'pause', reason: 'enospc' });
    expect(
      parseEventLine("2026-11-22 06:00:00.000+0000: event 'io-error' for domain 'vm1': /var/lib/img (virtio-disk0) pause", NOW),
    ).toMatchObject({
      kind: 'other',
      name: 'io-error',
    });
  });

  it('events vesper does not classify keep their name and detail', () => {
    expect(parseEventLine("2026-11-22 06:00:00.000+0000: event 'rtc-change' for domain 'vm1': 3600", NOW)).toMatchObject({
      kind: 'other',
      name: 'rtc-change',
      domain: 'vm1',
      detail: '3600',
    });
    expect(parseEventLine("2026-11-22 06:00:00.000+0000: event 'tray-change' for domain 'vm1' disk ide0-0-0: opened", NOW)).toMatchObject({
      kind: 'other',
      domain: 'vm1',
      device: 'ide0-0-0',
      detail: 'opened',
    });
  });

  it('without --timestamp the time is when the line was read', () => {
    expect(parseEventLine("event 'lifecycle' for domain 'vm1': Started Booted", NOW)).toMatchObject({
      at: NOW,
      kind: 'lifecycle',
      event: 'Started',
    });
  });

  it('domain names with quotes and spaces', () => {
    expect(parseEventLine("2026-11-22 06:00:00.000+0000: event 'lifecycle' for domain 'it's a vm': Started Booted", NOW)).toMatchObject({
      domain: "it's a vm",
      event: 'Started',
    });
  });

  it('anything else is kind "other", never an exception', () => {
    for (const line of [
      'events received: 3',
      'event loop interrupted',
      '',
      '\u0000\u00ff garbage',
      "event 'lifecycle' for domain",
      '2026-13-45 99:99:99.999+0000: x',
    ]) {
      expect(parseEventLine(line, NOW)).toEqual({ at: NOW, domain: '', kind: 'other', name: '', raw: line });
    }
    expect(parseEventLine("2026-99-99 06:00:00.000+0000: event 'reboot' for domain 'vm1'", NOW).at).toEqual(NOW);
  });
});

describe('EventLineParser', () => {
  it('joins lines split across chunks, and hands each event out with its chunk', () => {
    const p = new EventLineParser();
    // virsh writes the timestamp and the event in two writes
    expect(p.push('2026-11-22 05:57:34.991+0000: ', NOW)).toEqual([]);
    expect(p.push("event 'lifecycle' for domain 'vm1': Started", NOW)).toEqual([]);
    const [e] = p.push(' Booted\n', NOW);
    expect(e).toMatchObject({ kind: 'lifecycle', domain: 'vm1', event: 'Started', reason: 'Booted' });
    const two = p.push("event 'reboot' for domain 'vm1'\nevent 'watchdog' for domain 'vm1': reset\n", NOW);
    expect(two.map((x) => x.kind)).toEqual(['reboot', 'watchdog']);
  });

  it('keeps the continuation lines of a multi-line event with it', () => {
    const p = new EventLineParser();
    const out = p.push(
      "2026-11-22 06:00:00.000+0000: event 'tunable' for domain 'vm1':\n\tcputune.vcpu_quota: 1000\n\tcputune.vcpu_period: 100000\n",
      NOW,
    );
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ name: 'tunable', kind: 'other', detail: '\tcputune.vcpu_quota: 1000\n\tcputune.vcpu_period: 100000' });
    const mf = p.push(
      "event 'memory-failure' for domain 'vm1':\nrecipient: guest\naction: ignore\nflags:\n\taction required: 0\n\trecursive: 0\nevent 'reboot' for domain 'vm1'\n",
      NOW,
    );
    expect(mf.map((x) => [x.name, x.detail?.split('\n').length])).toEqual([
      ['memory-failure', 5],
      ['reboot', undefined],
    ]);
    // virsh's own trailer is not part of the event before it
    expect(p.push("event 'lifecycle' for domain 'vm1': Stopped Destroyed\nevents received: 2\n", NOW).map((x) => x.kind)).toEqual([
      'lifecycle',
      'other',
    ]);
    // a stray line with no event before it in its chunk stands alone
    expect(p.push('\tcputune.emulator_quota: 5\n', NOW)).toMatchObject([{ kind: 'other', domain: '' }]);
  });
});

describe('LibvirtEvents supervising virsh (fake virsh)', () => {
  const dirs: string[] = [];
  const running: LibvirtEvents[] = [];
  afterEach(async () => {
    await Promise.all(running.splice(0).map((e) => e.stop()));
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** A virsh that registers (as libvirt's debug log shows it), prints one event, and on its first run loses libvirtd. */
  function fakeVirsh(): { bin: string; dir: string } {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-fake-virsh-'));
    dirs.push(dir);
    const bin = join(dir, 'virsh');
    writeFileSync(
      bin,
      `#!/bin/sh
echo "$*" > ${dir}/args
n=$(cat ${dir}/runs 2>/dev/null || echo 0); n=$((n + 1)); echo $n > ${dir}/runs; echo $$ > ${dir}/pid
echo "2026-11-22 05:58:24.426+0000: 25219: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)" >&2
for i in $(seq 0 26); do
  echo "2026-11-22 05:58:24.582+0000: 24830: debug : virConnectDomainEventRegisterAny:9933 : dom=(nil), (VM: name=<null>, uuid=), conn=0x55c5cccd1070, eventID=$i, cb=0x55c5b4281660, opaque=0x55c5cccdaee0, freecb=(nil)" >&2
done
printf '2026-11-22 05:57:34.991+0000: '
echo "event 'lifecycle' for domain 'vm$n': Started Booted"
if [ "$n" = 1 ]; then
  echo "error: Disconnected from qemu:///system due to end of file" >&2
  echo "error: internal error: client socket is closed" >&2
  exit 1
fi
exec sleep 60
`,
    );
    chmodSync(bin, 0o755);
    return { bin, dir };
  }

  it('restarts virsh with backoff when it exits, reports readiness each time, and kills it on stop', async () => {
    const { bin, dir } = fakeVirsh();
    const ev = new LibvirtEvents({ uri: 'qemu:///system', virsh: bin, minBackoffMs: 50 });
    running.push(ev);
    const got: LibvirtEvent[] = [];
    const exits: LibvirtEventsExit[] = [];
    let readies = 0;
    ev.on('event', (e) => got.push(e));
    ev.on('exit', (x) => exits.push(x));
    ev.on('ready', () => readies++);
    ev.start();

    await waitFor('events from both runs', () => got.length >= 2 && readies >= 2, 10_000);
    expect(got.map((e) => e.domain)).toEqual(['vm1', 'vm2']);
    expect(readFileSync(join(dir, 'args'), 'utf8').trim()).toBe('-c qemu:///system event --all --loop --timestamp');
    expect(exits).toEqual([
      {
        code: 1,
        signal: null,
        stderr: 'Disconnected from qemu:///system due to end of file\ninternal error: client socket is closed',
        restartInMs: 50,
      },
    ]);
    expect(ev.ready).toBe(true);
    await ev.whenReady(100);

    const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    await ev.stop();
    expect(() => process.kill(pid, 0)).toThrow();
    expect(ev.ready).toBe(false);
    expect(exits.at(-1)).toMatchObject({ signal: 'SIGTERM', restartInMs: -1 });
    expect(readFileSync(join(dir, 'runs'), 'utf8').trim()).toBe('2');
  });

  it.skipIf(spawnSync('setpriv', ['--help']).status !== 0)(
    'a vesperd killed with SIGKILL takes its virsh with it (parent-death signal)',
    async () => {
      const { bin, dir } = fakeVirsh();
      const src = pathToFileURL(join(projectRoot(), 'host/libvirt/events.ts')).href;
      const owner = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          `import { LibvirtEvents } from ${JSON.stringify(src)}; new LibvirtEvents({ virsh: ${JSON.stringify(bin)}, minBackoffMs: 10 }).start(); setInterval(() => {}, 1000);`,
        ],
        { stdio: 'ignore', cwd: projectRoot() },
      );
      try {
        // the second run of the fake virsh stays (exec sleep 60)
        const runs = (): string => (existsSync(join(dir, 'runs')) ? readFileSync(join(dir, 'runs'), 'utf8').trim() : '0');
        await waitFor('the second virsh run', () => runs() === '2', 15_000);
        const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
        expect(() => process.kill(pid, 0)).not.toThrow();
        owner.kill('SIGKILL');
        await waitFor(
          'virsh gone with its parent',
          () => {
            try {
              process.kill(pid, 0);
              return false;
            } catch {
              return true;
            }
          },
          5_000,
        );
      } finally {
        owner.kill('SIGKILL');
        // the fake virsh too, should it have outlived its parent (the failure this test catches)
        const pid = existsSync(join(dir, 'pid')) ? Number(readFileSync(join(dir, 'pid'), 'utf8')) : 0;
        if (pid > 0) spawnSync('kill', ['-9', String(pid)]);
      }
    },
    30_000,
  );

  it('keeps retrying, slower each time, when virsh cannot even start', async () => {
    const ev = new LibvirtEvents({ virsh: '/nonexistent/virsh', minBackoffMs: 10, maxBackoffMs: 40 });
    running.push(ev);
    const exits: LibvirtEventsExit[] = [];
    ev.on('exit', (x) => exits.push(x));
    ev.start();
    await waitFor('four failed starts', () => exits.length >= 4, 5_000);
    expect(exits.slice(0, 4).map((x) => x.restartInMs)).toEqual([10, 20, 40, 40]);
    expect(exits[0]?.stderr).toMatch(/ENOENT/);
    await expect(ev.whenReady(50)).rejects.toThrow(/did not register/);
  });
});
