// What a new agent's hello says of ended runs becomes a records-lost report, once.
import { describe, expect, it } from 'vitest';
import { endedRunLosses } from '../../host/daemon/ended-runs.js';

describe('endedRunLosses', () => {
  const hello = {
    endedRuns: [
      { bootId: 'b1', agentPid: 10, lastSeq: 500 },
      { bootId: 'b1', agentPid: 9, lastSeq: 80 },
    ],
  };

  it('counts what the store does not hold of each ended run, and files it at the run’s last seq', () => {
    const held: Record<string, number> = { 'b1/10': 420, 'b1/9': 80 };
    const out = endedRunLosses('vm1', hello, (run) => held[run] ?? 0, 1_000);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({
      vm: 'vm1',
      plugin: 'channel',
      event: 'records-lost',
      source: { agentRun: 'b1/10', seq: 500 },
      payload: { loss: { source: 'AGENT_ENDED', count: 80, firstSeq: 421, lastSeq: 500 }, agentRun: 'b1/10' },
    });
  });

  it('a run the host never heard of lost everything it numbered', () => {
    const out = endedRunLosses('vm1', hello, () => 0);
    expect(out.map((e) => (e.payload['loss'] as { count: number }).count)).toEqual([500, 80]);
  });

  it('reports nothing once the report itself is held (it sits at the last seq)', () => {
    expect(endedRunLosses('vm1', hello, () => 500 + 80)).toEqual([]);
    expect(endedRunLosses('vm1', {}, () => 0)).toEqual([]);
  });
});
