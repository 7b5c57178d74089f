// One timer per period for the whole agent: the main thread's periodic work (the probe
// workers' liveness checks, idle PSI samples, the main-thread watchdog's counter) asks for a
// period here, and everything that asks for the same period runs in one wake-up instead of
// one each. The timers do not keep the process alive.
//
// And no wake-up of its own while something else wakes the main thread anyway: poke(), called
// where a probe worker's output arrives (an idle agent's heartbeat, once a second), runs every
// group at least half-way through its period, and starts every group's timer over (one that
// was not half-way runs a period after the poke: later, once, by less than half a period). So
// at rest the tick falls into step with the heartbeat and rides on it, and the timer fires
// only when nothing came for a whole period. A group's work must take an early or a late run:
// the liveness checks count a run by its share of a period (probe-worker.ts).
interface Group {
  ms: number;
  timer: NodeJS.Timeout;
  fns: Set<() => void>;
  /** performance.now() of the last run */
  last: number;
}

/** how far through its period (a share) a group must be for a poke to run it */
const POKE_AFTER = 0.5;

const groups = new Map<number, Group>();

function run(g: Group): void {
  g.last = performance.now();
  for (const f of [...g.fns]) f();
}

/** Calls fn every ms, beside whatever else runs every ms; returns the way to stop it. */
export function onTick(ms: number, fn: () => void): () => void {
  let g = groups.get(ms);
  if (!g) {
    const fns = new Set<() => void>();
    const group: Group = { ms, fns, last: performance.now(), timer: null as unknown as NodeJS.Timeout };
    group.timer = setInterval(() => run(group), ms);
    group.timer.unref();
    g = group;
    groups.set(ms, g);
  }
  const group = g;
  // A function given twice runs twice: each call has its own entry.
  const entry = (): void => fn();
  group.fns.add(entry);
  return () => {
    group.fns.delete(entry);
    if (!group.fns.size && groups.get(ms) === group) {
      clearInterval(group.timer);
      groups.delete(ms);
    }
  };
}

/** The main thread is awake anyway: runs the groups half-way through their period; every group's timer starts over. */
export function poke(): void {
  if (!groups.size) return;
  const now = performance.now();
  for (const g of groups.values()) {
    if (now - g.last >= g.ms * POKE_AFTER) run(g);
    g.timer.refresh();
  }
}
