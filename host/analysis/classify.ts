// Verdicts from one window's timeline: what failed, how sure we are, where (one service, the
// whole guest, the host), and the events each verdict rests on.
//
// The passes go from the hardest evidence to the softest, and each event explains one thing
// only: the hypervisor's own word (a panic, a stop, an I/O error) claims the channel's silence
// around it; an OOM record claims the SIGKILL and the exit that follow; a new agent run on the
// same boot claims the heartbeat gap before it; the watchdog claims the silence of a hang.
// Whatever silence is left unexplained becomes a verdict marked uncertain: a heartbeat gap
// alone does not say whether the guest hung, the agent stalled or the host was slow.
// Each family of verdicts is a pass of its own in verdicts/; this file runs them in order and
// ranks what they drew.
import type { Placed } from './timeline.js';
import type { Verdict, VerdictKind } from './types.js';
import { actions } from './verdicts/actions.js';
import { agentFaults } from './verdicts/agent.js';
import { agentRuns } from './verdicts/agent-runs.js';
import { channelLeftovers } from './verdicts/channel.js';
import { exits } from './verdicts/exits.js';
import { hangs } from './verdicts/hangs.js';
import { ioErrors } from './verdicts/io-errors.js';
import { ooms } from './verdicts/oom.js';
import { pacemaker } from './verdicts/pacemaker.js';
import { panics } from './verdicts/panics.js';
import { hostPauses } from './verdicts/pauses.js';
import { signals, type AgentKill } from './verdicts/signals.js';
import { stopsAndReboots } from './verdicts/stops.js';
import { Window, type Draft } from './verdicts/window.js';

/** Kinds in order of how much they matter to an operator (for sorting). */
const SEVERITY: VerdictKind[] = [
  'guest-panic',
  'oom',
  'app-crash',
  'guest-hang',
  'io-error',
  'agent-fault',
  'app-killed',
  'channel-loss',
  'guest-stopped',
  'planned-stop',
  'host-paused',
  'unknown',
];

export interface ClassifyOptions {
  /** the event the window was chosen around: verdicts resting on it come first */
  anchorId?: number | null;
}

/** Verdicts for a window's placed events (host-clock order). */
export function classify(placed: readonly Placed[], o: ClassifyOptions = {}): Verdict[] {
  const w = new Window(placed);
  const runs = agentRuns(w);
  const out: Draft[] = [];
  const agentKills: AgentKill[] = [];
  panics(w, out);
  ioErrors(w, out);
  // Before the stops: a domain saved or migrated away stopped, but was kept.
  hostPauses(w, out);
  stopsAndReboots(w, runs, out);
  ooms(w, out);
  signals(w, runs, out, agentKills);
  exits(w, out);
  // A new agent run is hard evidence; the watchdog's hang then gets only the silence left.
  agentFaults(w, runs, out, agentKills);
  hangs(w, out);
  channelLeftovers(w, runs, out);
  pacemaker(w, out);
  actions(w, out);
  const timeOf = new Map(placed.map((p) => [p.id, p.timeUs]));
  const anchor = o.anchorId ?? null;
  const rank = (d: Draft): number[] => [
    anchor !== null && d.evidence.has(anchor) ? 0 : 1,
    d.confidence === 'confident' ? 0 : 1,
    SEVERITY.indexOf(d.kind),
    -d.atUs,
  ];
  out.sort((a, b) => {
    const ra = rank(a);
    const rb = rank(b);
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return (ra[i] as number) - (rb[i] as number);
    return 0;
  });
  return out.map((d) => {
    const v: Verdict = {
      kind: d.kind,
      scope: d.scope,
      confidence: d.confidence,
      summary: d.summary,
      evidence: [...d.evidence].sort((a, b) => (timeOf.get(a) ?? 0) - (timeOf.get(b) ?? 0) || a - b),
      atUs: d.atUs,
    };
    if (Object.keys(d.details).length) v.details = d.details;
    return v;
  });
}
