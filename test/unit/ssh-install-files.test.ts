// What `vesper agent install` writes on a target, checked by the tools that will read it: the
// systemd unit by `systemd-analyze verify` (any complaint fails), the wrappers by `sh -n` and
// by what they exec (the relay starts the agent itself only where systemd does not).
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { relayCommand, type AgentLayout } from '../../host/ssh/agent-link.js';
import { agentWrapper, bootCommand, checkLayout, relayWrapper, unitText } from '../../host/ssh/agent-files.js';

const dir = mkdtempSync(join(tmpdir(), 'vesper-install-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const layout: AgentLayout = { prefix: join(dir, 'opt', 'vesper-agent'), runDir: '/run/vesper-agent', unit: 'vesper-agent-ssh.service' };
const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('files install writes', () => {
  it.skipIf(!hasAnalyze)('the unit passes systemd-analyze verify without a word', () => {
    mkdirSync(join(layout.prefix, 'bin'), { recursive: true });
    writeFileSync(join(layout.prefix, 'bin', 'vesper-agent'), agentWrapper(layout, process.execPath));
    chmodSync(join(layout.prefix, 'bin', 'vesper-agent'), 0o755);
    const unit = join(dir, layout.unit);
    writeFileSync(unit, unitText(layout));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', unit], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr.split('\n').filter((l) => l.includes(layout.unit))).toEqual([]);
    expect(r.status).toBe(0);
    expect(unitText(layout)).toMatch(
      /^ExecStart=\S+\/bin\/vesper-agent --transport unix:\/run\/vesper-agent\/agent\.sock --host-key \S+\/host\.pub --state-file \/run\/vesper-agent\/run-state$/m,
    );
    expect(unitText(layout)).toMatch(/^Restart=on-failure$/m);
  });

  it('the relay wrapper spawns the agent only without systemd, and both wrappers are valid sh', () => {
    const withSystemd = relayWrapper(layout, true);
    const without = relayWrapper(layout, false);
    expect(withSystemd).not.toContain('--spawn');
    expect(without).toContain(
      `--spawn --host-key ${layout.prefix}/host.pub --log /run/vesper-agent/agent.log --pid-file /run/vesper-agent/agent.pid --state-file /run/vesper-agent/run-state`,
    );
    for (const text of [withSystemd, without, agentWrapper(layout, '/usr/bin/node')]) {
      const f = join(dir, 'w.sh');
      writeFileSync(f, text);
      expect(spawnSync('sh', ['-n', f]).status).toBe(0);
    }
    // what vesperd runs over SSH is the wrapper install writes
    expect(without).toContain(`exec ${layout.prefix}/bin/vesper-agent relay`);
    expect(relayCommand(layout)).toBe(`${layout.prefix}/bin/vesper-agent-relay`);
    expect(bootCommand(layout)).toBe(`${layout.prefix}/bin/vesper-agent-relay </dev/null >/dev/null 2>&1`);
  });

  it('layouts: absolute plain paths only; trailing slashes dropped', () => {
    expect(checkLayout({ ...layout, prefix: '/opt/vesper-agent/' }).prefix).toBe('/opt/vesper-agent');
    for (const bad of ['opt/x', '/', '/opt/../etc', '/opt/.', '/opt/with space', '/opt/$(id)', "/opt/'x"])
      expect(() => checkLayout({ ...layout, prefix: bad }), bad).toThrow(/absolute path/);
    expect(() => checkLayout({ ...layout, unit: 'x;rm.service' })).toThrow(/NAME\.service/);
  });
});
