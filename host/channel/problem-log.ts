// How the manager logs what is wrong with a guest's link (bad frames, refused claims, unsolicited
// messages): each kind of problem once, with the VM's name, when it first happens; repeats are
// counted and told in one summary line per window. A guest decides how many problems it causes,
// so it must not decide how many lines the manager writes: a hostile one sending a bad frame per
// millisecond wrote 1,700 log lines a second before this.
import type { VesperError } from '../../proto/errors.js';

export interface ProblemLogger {
  warn(obj: object, msg: string): void;
}

export interface ProblemLogOptions {
  /** lines a second this VM's problems may write, on average (default 2) */
  perSecond?: number;
  /** and at once (default 10) */
  burst?: number;
  /** repeats are summed up in one line this often (ms, default 10,000) */
  summaryEveryMs?: number;
  now?: () => number;
}

/** kinds of problem told apart per VM; a guest inventing more (its own error codes) gets them summed as one */
const MAX_KINDS = 32;
/** a guest's text in a log line is cut to this */
const MAX_TEXT = 200;

const cut = (s: string, n = MAX_TEXT): string => (s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s);

export class ProblemLog {
  private readonly seen = new Set<string>();
  private repeats = new Map<string, number>();
  private lastRepeat = '';
  private tokens: number;
  private refilledAt: number;
  private timer: NodeJS.Timeout | null = null;
  private readonly perSecond: number;
  private readonly burst: number;
  private readonly summaryEveryMs: number;
  private readonly now: () => number;
  /** lines written and problems only counted, for tests and status */
  lines = 0;
  counted = 0;

  constructor(
    private readonly log: ProblemLogger,
    readonly vm: string,
    o: ProblemLogOptions = {},
  ) {
    this.perSecond = o.perSecond ?? 2;
    this.burst = o.burst ?? 10;
    this.summaryEveryMs = o.summaryEveryMs ?? 10_000;
    this.now = o.now ?? Date.now;
    this.tokens = this.burst;
    this.refilledAt = this.now();
  }

  tell(e: VesperError): void {
    const code = this.seen.has(e.code) || this.seen.size < MAX_KINDS ? cut(e.code, 64) : 'other';
    if (!this.seen.has(code) && this.take()) {
      this.seen.add(code);
      this.lines++;
      this.log.warn({ vm: this.vm, code, err: cut(e.message) }, 'channel problem');
      return;
    }
    this.counted++;
    this.repeats.set(code, (this.repeats.get(code) ?? 0) + 1);
    this.lastRepeat = cut(e.message);
    if (this.timer === null) {
      this.timer = setTimeout(() => this.summarise(), this.summaryEveryMs);
      this.timer.unref();
    }
  }

  /** Stops the summary timer, writing what it would have. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.summarise();
  }

  private summarise(): void {
    this.timer = null;
    if (this.repeats.size === 0) return;
    const repeated = Object.fromEntries(this.repeats);
    const total = [...this.repeats.values()].reduce((a, b) => a + b, 0);
    this.repeats = new Map();
    // one line however many there were: it does not wait for a token
    this.lines++;
    this.log.warn({ vm: this.vm, repeated, total, last: this.lastRepeat }, 'channel problems repeated');
  }

  private take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.perSecond);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
