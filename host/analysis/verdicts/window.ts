// The window's events as the verdict passes read them, and the verdicts they draft. Each event
// explains one thing only: a pass that cites an event claims it, and later passes see only the
// events left unclaimed (unless they ask for any, to cite something already explained).
import type { Obj } from '../payload.js';
import type { Placed } from '../timeline.js';
import type { VerdictConfidence, VerdictKind, VerdictScope } from '../types.js';

/** One second in µs, the unit of every time here. */
export const S = 1_000_000;

/** What a broken link or a silent guest leaves on the channel: claimed by whatever explains it. */
export const CHANNEL_SILENCE = ['channel/agent-lost', 'channel/heartbeat-lost', 'channel/heartbeat-back'];

/** A verdict being drawn: the evidence is a set of event ids until the verdicts are sorted. */
export interface Draft {
  kind: VerdictKind;
  scope: VerdictScope;
  confidence: VerdictConfidence;
  summary: string;
  evidence: Set<number>;
  atUs: number;
  details: Obj;
}

export function draft(
  kind: VerdictKind,
  scope: VerdictScope,
  confidence: VerdictConfidence,
  atUs: number,
  summary: string,
  details: Obj = {},
): Draft {
  return { kind, scope, confidence, summary, evidence: new Set(), atUs, details };
}

/** The events of the window in host-clock order, with lookups by kind and time. */
export class Window {
  private readonly byKind = new Map<string, Placed[]>();
  readonly claimed = new Set<number>();

  constructor(readonly all: readonly Placed[]) {
    for (const p of all) {
      const k = `${p.ev.plugin}/${p.ev.event}`;
      let l = this.byKind.get(k);
      if (l === undefined) this.byKind.set(k, (l = []));
      l.push(p);
    }
  }

  /** Events of a kind ("plugin/event"), claimed or not. */
  of(kind: string): Placed[] {
    return this.byKind.get(kind) ?? [];
  }

  /** Events of a kind with fromUs <= time <= toUs, unclaimed unless `any`. */
  near(kind: string, fromUs: number, toUs: number, any = false): Placed[] {
    return this.of(kind).filter((p) => p.timeUs >= fromUs && p.timeUs <= toUs && (any || !this.claimed.has(p.id)));
  }

  /** The events become the draft's evidence, and no other pass explains them again. */
  claim(d: Draft, ps: Iterable<Placed>): void {
    for (const p of ps) {
      this.claimed.add(p.id);
      d.evidence.add(p.id);
    }
  }
}

/** Groups time-ordered events that follow each other within gapUs. */
export function clusters(ps: Placed[], gapUs: number): Placed[][] {
  const out: Placed[][] = [];
  for (const p of ps) {
    const last = out.at(-1);
    if (last && p.timeUs - (last.at(-1) as Placed).timeUs <= gapUs) last.push(p);
    else out.push([p]);
  }
  return out;
}

/** A duration for a summary: "2.5 s", "42 s". */
export function secs(us: number): string {
  const s = us / S;
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

/** A host time for a summary: time of day to the millisecond, UTC ("12:03:04.567"). */
export function clock(us: number): string {
  return new Date(us / 1000).toISOString().slice(11, 23);
}
