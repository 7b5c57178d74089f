// Vesper's own actions (a restart, a failover) follow the events that caused them: each goes
// with the verdict that cites its cause, and makes no verdict of its own.
import { num, obj } from '../payload.js';
import type { Draft, Window } from './window.js';

/** Vesper's actions follow the events that caused them: they go with those verdicts. */
export function actions(w: Window, out: Draft[]): void {
  for (const a of [...w.of('action/done'), ...w.of('action/failed')]) {
    const cause = num(obj(a.ev.payload['cause'])['id']);
    const d = cause !== undefined ? out.find((x) => x.evidence.has(cause)) : undefined;
    if (d) w.claim(d, [a]);
  }
}
