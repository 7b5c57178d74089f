// The agent runs a window shows: each run is one agent process on one boot of the guest, named
// "<boot id>/<agent pid>" (GuestSession's id of a hello). A new run on the same boot means the
// agent died; a new boot means the guest went down.
import { num, str } from '../payload.js';
import type { Placed } from '../timeline.js';
import type { Window } from './window.js';

/** An agent run in the window: when it was first and last heard of, and its boot and pid. */
export interface RunInfo {
  run: string;
  boot: string;
  pid: number;
  firstUs: number;
  lastUs: number;
  /** its last guest record (a hello is the host's, not the run's) */
  lastRecord: Placed | null;
}

function parseRun(run: string): { boot: string; pid: number } {
  const i = run.lastIndexOf('/');
  return { boot: i < 0 ? run : run.slice(0, i), pid: i < 0 ? 0 : Number(run.slice(i + 1)) || 0 };
}

/** The run an agent-connected event announces ("<boot id>/<pid>"), '' when its payload lacks them. */
export function runOfHello(p: Placed): string {
  const boot = str(p.ev.payload['bootId']);
  const pid = num(p.ev.payload['agentPid']);
  return boot && pid !== undefined ? `${boot}/${pid}` : '';
}

/** Every run the window's guest records and hellos name, earliest first. */
export function agentRuns(w: Window): RunInfo[] {
  const runs = new Map<string, RunInfo>();
  const see = (run: string, p: Placed, record: boolean): void => {
    let r = runs.get(run);
    if (r === undefined) {
      const { boot, pid } = parseRun(run);
      runs.set(run, (r = { run, boot, pid, firstUs: p.timeUs, lastUs: p.timeUs, lastRecord: null }));
    }
    r.firstUs = Math.min(r.firstUs, p.timeUs);
    r.lastUs = Math.max(r.lastUs, p.timeUs);
    if (record && (r.lastRecord === null || p.timeUs >= r.lastRecord.timeUs)) r.lastRecord = p;
  };
  for (const p of w.all) {
    if (p.ev.source) see(p.ev.source.agentRun, p, true);
    else if (p.ev.plugin === 'channel' && p.ev.event === 'agent-connected') {
      const run = runOfHello(p);
      if (run) see(run, p, false);
    }
  }
  return [...runs.values()].sort((a, b) => a.firstUs - b.firstUs);
}

/** The agent run that started last before `us`, other than `except` (the run a hello announces). */
export function runBefore(runs: RunInfo[], us: number, except = ''): RunInfo | null {
  let best: RunInfo | null = null;
  for (const r of runs) if (r.run !== except && r.firstUs < us && (best === null || r.firstUs > best.firstUs)) best = r;
  return best;
}
