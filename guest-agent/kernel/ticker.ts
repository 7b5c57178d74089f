// One timer per period for the whole agent: the main thread's periodic work (the probe
// workers' liveness checks, idle PSI samples, the main-thread watchdog's counter) asks for a
// period here, and everything that asks for the same period runs in one wake-up instead of
// one each. The timers do not keep the process alive.
interface Group {
  timer: NodeJS.Timeout;
  fns: Set<() => void>;
}

const groups = new Map<number, Group>();

/** Calls fn every ms, beside whatever else runs every ms; returns the way to stop it. */
export function onTick(ms: number, fn: () => void): () => void {
  let g = groups.get(ms);
  if (!g) {
    const fns = new Set<() => void>();
    const timer = setInterval(() => {
      for (const f of [...fns]) f();
    }, ms);
    timer.unref();
    g = { timer, fns };
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
