// No false alarm when the host itself stops the guest's clock. A domain that libvirt pauses
// (`virsh suspend`), saves, snapshots with memory or migrates stops running: its agent cannot
// beat and its QEMU may close the channel's port. Users of other tools see health checks kill
// healthy VMs for that. vesperd knows from libvirt: while a domain is held stopped by the host,
// its link raises neither heartbeat-lost nor agent-lost (so no action fires on them), the
// channel plugin says `watch-held` (with why: user, save, snapshot, migration...) and
// `watch-resumed` when it runs again, and detection resumes at once then, the first beat given
// channel.resume_grace more (a resumed guest's timers, a restored guest's new link).
//
// libvirt 9.0's words, seen on this machine kind (virsh event / domstate --reason):
//   suspend ... resume:  Suspended Paused (paused (user))      ... Resumed Unpaused
//   save ... restore:    Suspended Paused (paused (saving)?), Stopped Saved (shut off (saved))
//                        ... Started Restored, Resumed Snapshot (running (restored))
//   external snapshot:   Suspended Paused ... Resumed Unpaused (also with --live, at its end)
//   migration (source):  Suspended Migrated / Paused, Stopped Migrated
// The lifecycle detail says 'Paused' for save and snapshot alike, so the finer reason is read
// with domstate --reason once the pause is seen. After a restart of the event source the
// states are reconciled from the domain list (reconcile()).
import type { Logger } from 'pino';
import type { LibvirtEvent } from '../libvirt/events.js';
import type { VesperEvent } from '../notify/event.js';
import type { GuestLink } from './guest-link.js';

/** Why the host holds the guest stopped, in one word. */
export type HoldWhy = 'user' | 'save' | 'snapshot' | 'migration' | 'dump' | 'ioerror' | 'watchdog' | 'restore' | 'api-error' | 'paused';

/** What a libvirt event means for the hold: start (or keep) it, end it (the guest runs), drop it (the domain is gone or booted anew). */
export type HoldChange = { kind: 'hold'; why: HoldWhy | null } | { kind: 'release' } | { kind: 'drop' } | null;

/** A lifecycle event's effect on the hold. `why` null: the detail does not say (read the state's reason). */
export function holdChangeOf(e: LibvirtEvent): HoldChange {
  if (e.kind !== 'lifecycle') return null;
  const detail = e.reason ?? '';
  switch (e.event) {
    case 'Suspended':
      return { kind: 'hold', why: suspendedWhy(detail) };
    case 'Resumed':
      return { kind: 'release' };
    case 'Stopped':
      // Saved, migrated away, or stopped for a snapshot: the guest is kept, not ended.
      if (detail === 'Saved') return { kind: 'hold', why: 'save' };
      if (detail === 'Migrated') return { kind: 'hold', why: 'migration' };
      if (detail === 'Snapshot') return { kind: 'hold', why: 'snapshot' };
      return { kind: 'drop' };
    case 'Started':
      // Restored, migrated in, reverted to a snapshot: still stopped until libvirt resumes it.
      return detail === 'Booted' || detail === 'Wakeup' || detail === 'Event wakeup' ? { kind: 'drop' } : null;
    default:
      return null;
  }
}

function suspendedWhy(detail: string): HoldWhy | null {
  switch (detail) {
    case 'Migrated':
    case 'Post-copy':
    case 'Post-copy Error':
      return 'migration';
    case 'Snapshot':
      return 'snapshot';
    case 'I/O Error':
      return 'ioerror';
    case 'Watchdog':
      return 'watchdog';
    case 'Restored':
      return 'restore';
    case 'API error':
      return 'api-error';
    default:
      return null; // 'Paused': an operator, a save, a snapshot or a dump; the state's reason tells
  }
}

/** virDomainJobOperation (libvirt ABI) as a HoldWhy, for the operations that stop the guest. */
const JOB_OPERATIONS: Readonly<Record<number, HoldWhy>> = { 2: 'save', 5: 'migration', 6: 'snapshot', 8: 'dump' };

/** `virsh domstate --reason`'s reason (paused or shut off) as a HoldWhy; null when it is not a hold. */
export function whyOfStateReason(state: string, reason: string): HoldWhy | null {
  const r = reason.toLowerCase();
  if (state === 'paused') {
    if (r === 'user') return 'user';
    if (r.startsWith('migrat') || r.startsWith('post-copy')) return 'migration';
    if (r.startsWith('sav')) return 'save';
    if (r.startsWith('dump')) return 'dump';
    if (r.includes('snapshot')) return 'snapshot';
    if (r.startsWith('i/o') || r === 'ioerror') return 'ioerror';
    if (r === 'watchdog') return 'watchdog';
    if (r.startsWith('api')) return 'api-error';
    return 'paused';
  }
  if (state === 'shut off') {
    if (r === 'saved') return 'save';
    if (r === 'migrated') return 'migration';
    if (r.includes('snapshot')) return 'snapshot';
  }
  return null;
}

export interface HostPausesDeps {
  /** the VM's link now, if it has one */
  link: (vm: string) => GuestLink | null;
  /** libvirt's state and reason (domstate --reason); may reject */
  stateOf: (vm: string) => Promise<{ state: string; reason: string }>;
  hostEvent: (ev: VesperEvent) => void;
  log: Logger;
  /** ms the first beat after the hold may take beyond the usual misses × interval */
  graceMs: number;
  /** how long the reason is looked for before watch-held is told without it (ms, default 3,000) */
  reasonTimeoutMs?: number;
}

interface Hold {
  sinceMs: number;
  why: HoldWhy | null;
  /** libvirt's words that started it ('Suspended Paused') */
  libvirt: string;
  /** watch-held has been told */
  told: boolean;
  dropped: number;
}

export class HostPauses {
  private readonly held = new Map<string, Hold>();
  /** when each VM's hold last changed (ms): a domain list read before that is stale for it */
  private readonly changedAt = new Map<string, number>();
  /** until when (ms) a link made after the release still gets the grace (a restore's new link comes after libvirt's resume) */
  private readonly graceUntil = new Map<string, number>();

  constructor(private readonly d: HostPausesDeps) {}

  isHeld(vm: string): boolean {
    return this.held.has(vm);
  }

  /** A libvirt event of a watched domain, after it is stored. */
  onEvent(e: LibvirtEvent): void {
    if (e.name === 'job-completed') return this.jobDone(e);
    const c = holdChangeOf(e);
    if (!c || !e.domain) return;
    const words = `${e.event ?? ''} ${e.reason ?? ''}`.trim();
    if (c.kind === 'hold') this.hold(e.domain, c.why, words);
    else if (c.kind === 'release') this.release(e.domain, words);
    else this.drop(e.domain, words);
  }

  /** A new link for the VM (the domain was restored or migrated back): held if the domain is. */
  linkMade(vm: string, link: GuestLink): void {
    const h = this.held.get(vm);
    if (h) {
      h.dropped++; // the link before it went with the domain's QEMU
      link.hold(h.sinceMs);
      return;
    }
    const left = (this.graceUntil.get(vm) ?? 0) - Date.now();
    if (left > 0) {
      link.hold();
      link.release(left);
    }
  }

  /**
   * The domain list's state, read from a listing asked for at `askedAtMs`: catches what the
   * events missed while the event source was away. A listing older than the hold's last change
   * is not acted on (it may predate the event).
   */
  reconcile(vm: string, state: string, askedAtMs: number): void {
    if ((this.changedAt.get(vm) ?? 0) >= askedAtMs) return;
    const h = this.held.get(vm);
    if (state === 'paused' && !h) this.hold(vm, null, `domain state ${state}`);
    else if ((state === 'running' || state === 'idle') && h) this.release(vm, `domain state ${state}`);
  }

  /** The VM left the table (undefined, migrated away as a transient domain). */
  forget(vm: string): void {
    this.held.delete(vm);
    this.changedAt.delete(vm);
    this.graceUntil.delete(vm);
  }

  private hold(vm: string, why: HoldWhy | null, libvirt: string): void {
    this.changedAt.set(vm, Date.now());
    const had = this.held.get(vm);
    if (had) {
      // Saved or migrated after the pause: the finer word, if the state had not given one.
      if (why && (!had.why || had.why === 'paused')) had.why = why;
      if (!had.told && had.why) this.tellHeld(vm, had);
      return;
    }
    const h: Hold = { sinceMs: Date.now(), why, libvirt, told: false, dropped: 0 };
    this.held.set(vm, h);
    this.d.link(vm)?.hold(h.sinceMs);
    if (why) {
      this.tellHeld(vm, h);
      return;
    }
    const timeout = new Promise<null>((r) => setTimeout(() => r(null), this.d.reasonTimeoutMs ?? 3000).unref());
    void Promise.race([this.d.stateOf(vm).catch(() => null), timeout]).then((s) => {
      if (this.held.get(vm) !== h || h.told) return;
      const found = s ? whyOfStateReason(s.state, s.reason) : null;
      if (found && (!h.why || h.why === 'paused')) h.why = found;
      this.tellHeld(vm, h, s ? `${s.state} (${s.reason})` : undefined);
    });
  }

  /**
   * A job ended while the domain is held: its operation names the hold when the state did not
   * (a live snapshot pauses the guest only for its last moment, too short to read it).
   */
  private jobDone(e: LibvirtEvent): void {
    const h = this.held.get(e.domain);
    const op = /\boperation: (\d+)/.exec(e.detail ?? '');
    const why = op ? JOB_OPERATIONS[Number(op[1])] : undefined;
    if (h && why && (!h.why || h.why === 'paused')) h.why = why;
  }

  private tellHeld(vm: string, h: Hold, state?: string): void {
    h.told = true;
    h.why ??= 'paused';
    this.d.log.info({ vm, why: h.why, libvirt: h.libvirt }, 'the host stopped the guest: heartbeat-lost and agent-lost held');
    this.event(vm, 'watch-held', { why: h.why, libvirt: h.libvirt, ...(state ? { state } : {}) });
  }

  private release(vm: string, libvirt: string): void {
    this.changedAt.set(vm, Date.now());
    const h = this.held.get(vm);
    if (!h) return;
    this.held.delete(vm);
    this.graceUntil.set(vm, Date.now() + this.d.graceMs);
    if (!h.told) this.tellHeld(vm, h);
    const dropped = h.dropped + (this.d.link(vm)?.release(this.d.graceMs) ?? 0);
    const heldMs = Date.now() - h.sinceMs;
    this.d.log.info({ vm, why: h.why, heldMs, graceMs: this.d.graceMs }, 'the guest runs again: detection resumed');
    this.event(vm, 'watch-resumed', { why: h.why, libvirt, heldMs, graceMs: this.d.graceMs, linkDropped: dropped > 0 });
  }

  /** The domain stopped for good or booted anew: no hold to resume; said if one was told. */
  private drop(vm: string, libvirt: string): void {
    this.changedAt.set(vm, Date.now());
    const h = this.held.get(vm);
    if (!h) return;
    this.held.delete(vm);
    this.d.link(vm)?.release(0);
    if (h.told) this.event(vm, 'watch-resumed', { why: h.why, libvirt, heldMs: Date.now() - h.sinceMs, graceMs: 0, ended: true });
  }

  private event(vm: string, event: string, payload: Record<string, unknown>): void {
    this.d.hostEvent({
      vm,
      plugin: 'channel',
      instance: 0,
      event,
      guestTimeUs: null,
      hostTimeUs: Date.now() * 1000,
      source: null,
      payload,
    });
  }
}
