// What an ended agent run took with it. A new agent's hello lists the earlier runs of its boot
// with the highest sequence number each had numbered (guest-agent/ring/run-state.ts); what the
// store does not hold of such a run died in its ring, and is reported here as the channel
// plugin's records-lost, with the count and the range.
//
// The report is stored as a record of the ended run itself, at its last seq: the store keeps
// one event per (run, seq), so a second hello naming the same run (a relink, a vesperd
// restart) finds that seq held and reports nothing again.
import type { pb } from '../../proto/codec.js';
import type { VesperEvent } from '../notify/event.js';

export function endedRunLosses(
  vm: string,
  hello: pb.IHello,
  held: (agentRun: string) => number,
  hostTimeUs = Date.now() * 1000,
): VesperEvent[] {
  const out: VesperEvent[] = [];
  for (const r of hello.endedRuns ?? []) {
    const run = `${r.bootId ?? ''}/${r.agentPid ?? 0}`;
    const last = Number(r.lastSeq ?? 0);
    const have = held(run);
    if (last <= have) continue;
    out.push({
      vm,
      plugin: 'channel',
      instance: 0,
      event: 'records-lost',
      guestTimeUs: null,
      hostTimeUs,
      source: { agentRun: run, seq: last },
      payload: {
        loss: { source: 'AGENT_ENDED', count: last - have, firstSeq: have + 1, lastSeq: last },
        agentRun: run,
        why: `agent run ${run} ended with records the host did not hold (numbered ${have + 1}..${last})`,
      },
    });
  }
  return out;
}
