// The CLI's tables and command-line handling, and the API's refusals of what could never work:
// plain columns off a terminal, tables fitted to a terminal's width, host events named, the
// global --socket anywhere, usage errors with VSP_USAGE and exit 2 (vesper and vesper-agent),
// `vesper help` exiting 0, filter keys nothing could match, signal names no probe knows.
import { Command } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { hoistGlobalOptions, main } from '../../host/cli/main.js';
import { formatTable, vmColumn, wrapText } from '../../host/cli/output.js';
import { checkFilterKey, checkProbeParamValue, notPushedReason } from '../../host/daemon/api-checks.js';
import { parseUsage } from '../../guest-agent/cli.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

const PROBE_ROW = [
  'signal',
  '1.0.0',
  'signal',
  'signals=SEGV,BUS,ILL,FPE,ABRT,SYS,TRAP,KILL,TERM,QUIT,INT,HUP comms= include_ignored=false',
  'Signals raised in the guest: number, code, who sent it (the kernel for a fault) and who received it. Filtered in the kernel.',
];
const HEAD = ['PROBE', 'VERSION', 'EVENTS', 'PARAMS', 'DESCRIPTION'];

describe('tables', () => {
  it('are plain aligned columns, no box, when stdout is not a terminal (as virsh prints them)', () => {
    const t = formatTable(
      ['VM', 'STATE'],
      [
        ['web1', 'running'],
        ['a-longer-name', 'shut off'],
      ],
      { tty: false },
    );
    expect(t).toBe('VM             STATE\nweb1           running\na-longer-name  shut off\n');
    expect(formatTable(['VM', 'STATE'], [], { tty: false })).toBe('VM  STATE\n'); // empty: the header alone
  });

  it('fit the terminal: no line wider than its columns, nothing of the text lost', () => {
    for (const columns of [60, 80, 120]) {
      const t = formatTable(HEAD, [PROBE_ROW], { tty: true, columns });
      const lines = t.trimEnd().split('\n');
      expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(columns);
      // every character of the cells is there, in order, once the borders and wrapping are gone
      const cellText = (i: number): string =>
        lines
          .slice(2, -1) // after the top border and the header, before the bottom border
          .map((l) => l.split('│')[i + 1]!.trim())
          .join('')
          .replace(/ /g, '');
      for (let i = 0; i < PROBE_ROW.length; i++) expect(cellText(i)).toBe(PROBE_ROW[i]!.replace(/ /g, ''));
    }
  });

  it('wrap at spaces where they can, inside a word where they must', () => {
    expect(wrapText('aaa bbb ccc', 7)).toBe('aaa bbb\nccc');
    expect(wrapText('abcdefghij', 4)).toBe('abcd\nefgh\nij');
    expect(wrapText('x abcdefghij', 4)).toBe('x ab\ncdef\nghij');
  });

  it('name the host in the VM column of host events', () => {
    expect(vmColumn('')).toBe('(host)');
    expect(vmColumn('web1')).toBe('web1');
  });
});

describe('the command line', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    process.exitCode = undefined;
  });

  it('takes the global --socket anywhere, but not after -- or among a filter action’s words', () => {
    expect(hoistGlobalOptions(['node', 'vesper', 'list', '-o', 'json', '--socket', '/s'])).toEqual([
      'node',
      'vesper',
      '--socket',
      '/s',
      'list',
      '-o',
      'json',
    ]);
    expect(hoistGlobalOptions(['node', 'vesper', 'events', '--socket=/s', '-f'])).toEqual([
      'node',
      'vesper',
      '--socket=/s',
      'events',
      '-f',
    ]);
    const action = ['node', 'vesper', 'filter', 'set', 'signal', '*', '*', 'action', 'exec', '/bin/x', '--socket', 'y'];
    expect(hoistGlobalOptions(action)).toEqual(action);
    const dashes = ['node', 'vesper', 'list', '--', '--socket', 'y'];
    expect(hoistGlobalOptions(dashes)).toEqual(dashes);
  });

  it('`vesper help` exits 0; a usage error says VSP_USAGE and exits 2', async () => {
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    await main(['node', 'vesper', 'help']);
    expect(process.exitCode).toBe(0);
    await main(['node', 'vesper', 'list', '--no-such-option']);
    expect(process.exitCode).toBe(2);
    expect(err.mock.calls.map((c) => String(c[0])).join('')).toContain(`vesper: ${ErrorCode.USAGE}: unknown option '--no-such-option'`);
  });

  it("vesper-agent's usage errors exit 2 with VSP_USAGE (as documented), --help exits 0", () => {
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const agent = (): Command => new Command('vesper-agent').requiredOption('-k, --host-key <path>', 'key').option('--ring-mb <n>', 'mb');
    expect(parseUsage(agent(), ['node', 'vesper-agent', '-k', '/k', '--bogus'])).toBe(false);
    expect(process.exitCode).toBe(2);
    expect(err.mock.calls.map((c) => String(c[0])).join('')).toContain(`vesper-agent: ${ErrorCode.USAGE}: unknown option '--bogus'`);
    process.exitCode = undefined;
    expect(parseUsage(agent(), ['node', 'vesper-agent'])).toBe(false); // the required key missing
    expect(process.exitCode).toBe(2);
    process.exitCode = undefined;
    expect(parseUsage(agent(), ['node', 'vesper-agent', '--help'])).toBe(false);
    expect(process.exitCode).toBe(0);
    process.exitCode = undefined;
    expect(parseUsage(agent(), ['node', 'vesper-agent', '-k', '/k'])).toBe(true);
  });
});

describe('what the API refuses', () => {
  const known = [
    { name: 'signal', events: ['signal'] },
    { name: 'channel', events: ['agent-lost', 'heartbeat-lost'] },
    { name: 'agent', events: null },
  ];
  const code = (f: () => void): string => {
    try {
      f();
      return 'accepted';
    } catch (err) {
      return `${(err as VesperError).code}: ${(err as Error).message}`;
    }
  };

  it('filter keys no plugin could match, with the known names; the wildcard alone passes', () => {
    expect(code(() => checkFilterKey('nosuchplugin', '*', known))).toBe(
      'VSP_FILTER_INVALID: no probe or host plugin is called "nosuchplugin"; known: agent, channel, signal',
    );
    expect(code(() => checkFilterKey('sig*', '*', known))).toContain("'*' alone is the wildcard");
    expect(code(() => checkFilterKey('signal', 'x', known))).toBe('VSP_FILTER_INVALID: signal has no event "x"; its events: signal');
    const named = known.filter((p) => p.events !== null);
    expect(code(() => checkFilterKey('*', 'heartbeat-*', named))).toContain('no plugin has an event "heartbeat-*"');
    expect(code(() => checkFilterKey('*', 'heartbeat-lost', known))).toBe('accepted');
    expect(code(() => checkFilterKey('*', '*', known))).toBe('accepted');
    expect(code(() => checkFilterKey('agent', 'probe_fault', known))).toBe('accepted'); // the agent's records are not listed
  });

  it('signal names the signal probe would refuse when it loads', () => {
    expect(code(() => checkProbeParamValue('signal', 'signals', 'SEGV,NOPE'))).toMatch(
      /^VSP_PROBE_BAD_PARAM: signal signals: unknown signal NOPE \(known: HUP, INT, .*SEGV/,
    );
    expect(code(() => checkProbeParamValue('signal', 'signals', 'SEGV,sigabrt,9,'))).toBe('accepted');
    expect(code(() => checkProbeParamValue('signal', 'comms', 'NOPE'))).toBe('accepted');
  });

  it('attach to a VM with no way to its agent says what is missing and how to add it', () => {
    const r = notPushedReason('web1', 'running', 'org.vesper.agent.0');
    expect(r).toContain('neither the vesper channel nor an SSH target');
    expect(r).toContain("name='org.vesper.agent.0'");
    expect(r).toContain('ssh.targets');
    expect(notPushedReason('web1', 'shut off', 'org.vesper.agent.0')).toContain('pushed when web1 runs');
  });
});
