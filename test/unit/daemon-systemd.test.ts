// The daemon's manners under systemd that need no service manager: log lines with their syslog
// priority for the journal and readable on a terminal, JOURNAL_STREAM matched against the
// stream stderr really is, and what a SIGHUP reload applies and what only a restart does.
import { mkdtempSync, openSync, closeSync, fstatSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../host/config/load.js';
import { formatLine, logStyleOf, stderrIsJournal, syslogPriority } from '../../contract/log-style.js';
import { planReload, takeLiveSettings } from '../../host/daemon/reload.js';

const line = (level: number, msg: string, extra: object = {}): string =>
  JSON.stringify({ level, time: Date.UTC(2026, 0, 2, 3, 4, 5, 6), pid: 42, ...extra, msg });

describe('log lines', () => {
  it('carry the syslog priority for the journal: error <3>, warn <4>, info <6>, debug <7>', () => {
    expect(formatLine(line(50, 'records not stored', { vm: 'db1', err: 'disk full' }), 'journal')).toBe(
      '<3>records not stored vm=db1 err="disk full"\n',
    );
    expect(formatLine(line(40, 'cannot link'), 'journal')).toBe('<4>cannot link\n');
    expect(formatLine(line(30, 'agent connected', { repushed: ['signal'] }), 'journal')).toBe(
      '<6>agent connected repushed="[\\"signal\\"]"\n',
    );
    expect(formatLine(line(20, 'x'), 'journal')).toBe('<7>x\n');
    expect([60, 50, 40, 30, 20, 10].map(syslogPriority)).toEqual([2, 3, 4, 6, 7, 7]);
  });

  it('read as time, level and message on a terminal, and stay JSON elsewhere', () => {
    expect(formatLine(line(40, 'slow', { ms: 12 }), 'terminal')).toMatch(/^\d\d:\d\d:\d\d\.006 WARN {2}slow ms=12\n$/);
    expect(formatLine(line(30, 'a\nb'), 'journal')).toBe('<6>a\\nb\n'); // one journal entry per line
    const j = line(30, 'as is');
    expect(formatLine(j, 'json')).toBe(j);
    expect(logStyleOf(true, true)).toBe('journal');
    expect(logStyleOf(false, true)).toBe('terminal');
    expect(logStyleOf(false, false)).toBe('json');
  });

  it('go to the journal only when JOURNAL_STREAM names the stream stderr is', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-js-'));
    const fd = openSync(join(dir, 'f'), 'w');
    try {
      const st = fstatSync(fd, { bigint: true });
      expect(stderrIsJournal({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd)).toBe(true);
      expect(stderrIsJournal({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }, fd)).toBe(false);
      expect(stderrIsJournal({}, fd)).toBe(false);
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true });
    }
  });
});

describe('a SIGHUP reload', () => {
  const base = `daemon: { socket: /tmp/a.sock }
store: { path: /tmp/e.db, retention: { max_age: 7d } }
filters: [{ plugin: signal, event: '*', decision: notify }]
`;
  it('applies filters, attach rules, log level, retention and SSH targets; the rest waits for a restart', () => {
    const now = parseConfig(base, 'a.yaml');
    const next = parseConfig(
      `daemon: { socket: /tmp/b.sock, log_level: debug }
store: { path: /tmp/e.db, retention: { max_age: 1d } }
filters: [{ plugin: signal, event: '*', decision: discard }]
ssh: { targets: { web1: { target: root@10.0.0.5 } } }
metrics: { listen: 127.0.0.1:9477 }
`,
      'b.yaml',
    );
    const plan = planReload(now, next);
    expect(plan.applied.sort()).toEqual(['daemon.log_level', 'filters', 'ssh', 'store.retention']);
    expect(plan.needRestart.sort()).toEqual(['daemon.socket', 'metrics']);
    const held = now; // the daemon's parts hold this object
    takeLiveSettings(now, next);
    expect(held.filters[0]!.decision).toEqual({ kind: 'discard' });
    expect(held.daemon.logLevel).toBe('debug');
    expect(held.store.retention.maxAge).toBe(86_400_000);
    expect(Object.keys(held.ssh.targets)).toEqual(['web1']);
    expect(held.daemon.socket).toBe('/tmp/a.sock'); // not live: the old value stays
    expect(held.metrics.listen).toEqual({ kind: 'off' });
  });

  it('of the same file changes nothing', () => {
    expect(planReload(parseConfig(base, 'a'), parseConfig(base, 'a'))).toEqual({ applied: [], needRestart: [] });
  });
});
