// ActionRunner: where the filter's `action` decisions become exec / restart / failover /
// pacemaker-fail / pacemaker-attr.
//
// run() is called on the ingest path, so it only parses, checks and queues; it never throws and
// never waits. Per VM, actions run one at a time in arrival order (two actions on one domain at
// once — a restart racing a failover — would fight over it); different VMs run in parallel.
// Anything but exec that arrives while an identical action is running or waiting for the same
// VM is coalesced into it: a dying VM raises several events (libvirt's, the heartbeat's, the
// probes') that all mean the same thing, and restarting it — or failing its Pacemaker resource,
// which adds to its fail-count each time — once per event would be wrong. exec is not
// coalesced: each event is the script's input. Whatever is admitted counts against the per-VM
// rate limit. Every outcome — done, failed, refused, coalesced — goes to onResult.
import { hostname } from 'node:os';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import type { VesperEvent } from '../notify/event.js';
import { runExec } from './exec.js';
import { FailoverError, failover } from './failover.js';
import type { FenceLock } from './fence-lock.js';
import { silentLog, type ActionLog } from './log.js';
import { PacemakerActions, noResourceMessage } from './pacemaker.js';
import { parseAction, type ParsedAction } from './parse.js';
import type { ActionRateLimiter } from './rate-limit.js';
import { restartDomain } from './restart.js';

export interface ActionResult {
  /** the action name as the filter gave it ('exec', 'restart', 'failover', 'pacemaker-fail', ..., or an unknown one) */
  action: string;
  ok: boolean;
  /** why it failed or was refused */
  error?: { code: string; message: string };
  /** what happened, JSON-serialisable: exit status and output, steps with their times, ... */
  detail: Record<string, unknown>;
}

export interface ActionRunnerOptions {
  /** libvirt for a URI; undefined: the one this manager watches. The factory owns the connections. */
  hypervisorFor(uri?: string): Promise<Hypervisor>;
  lock: FenceLock;
  limiter: ActionRateLimiter;
  /** how long an exec'd program may run */
  execTimeoutMs: number;
  onResult(ev: VesperEvent, result: ActionResult): void;
  log?: ActionLog;
  /** this manager in the fence lock (default "<hostname>/<pid>") */
  owner?: string;
  /** failover's standby when the action names none (config actions.standby_uri) */
  standbyUri?: string;
  /** failover refuses unless libvirt's lock manager guards the VM's disks (default true; docs/failures.md#failover) */
  requireLockManager?: boolean;
  /** how long the primary may take to report the fenced domain shut off (default 60 s) */
  confirmTimeoutMs?: number;
  /** libvirt-event-backed wait for a domain to stop (see failover) */
  waitStopped?: (vm: string, timeoutMs: number) => Promise<void>;
  /** bound on one restart or failover, after which its VM's next action may start (default 10 min) */
  actionTimeoutMs?: number;
  /** working directory of exec'd programs (default the daemon's) */
  execCwd?: string;
  /** pacemaker-fail and pacemaker-attr (default: no VM mapping, crm_node -n for the node) */
  pacemaker?: PacemakerActions;
}

interface Job {
  ev: VesperEvent;
  action: string;
  args: string[];
  parsed: ParsedAction;
}

interface Lane {
  running: Job | null;
  waiting: Job[];
}

/** Waiting actions per VM beyond which new ones are refused (the rate limit normally keeps far below). */
const MAX_WAITING = 32;

export class ActionRunner {
  private readonly lanes = new Map<string, Lane>();
  private idleWaiters: Array<() => void> = [];
  private readonly log: ActionLog;
  private readonly owner: string;
  private readonly pacemaker: PacemakerActions;

  constructor(private readonly o: ActionRunnerOptions) {
    this.log = o.log ?? silentLog;
    this.owner = o.owner ?? `${hostname()}/${process.pid}`;
    this.pacemaker = o.pacemaker ?? new PacemakerActions(undefined, this.log);
  }

  /** Starts (or queues) an action for an event. Never throws; the outcome goes to onResult. */
  run(ev: VesperEvent, action: string, args: string[]): void {
    try {
      this.admit(ev, action, [...args]);
    } catch (err) {
      this.log.error({ vm: ev?.vm, action, err: (err as Error)?.message }, 'action runner failed');
    }
  }

  /** Resolves when no action is running or waiting (for shutdown and tests). */
  idle(): Promise<void> {
    if (this.lanes.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Actions running or waiting for a VM. */
  pending(vm: string): number {
    const lane = this.lanes.get(vm);
    return lane ? lane.waiting.length + (lane.running ? 1 : 0) : 0;
  }

  private admit(ev: VesperEvent, action: string, args: string[]): void {
    let parsed: ParsedAction;
    try {
      parsed = parseAction(action, args);
    } catch (err) {
      this.report(ev, action, errorOf(err, ErrorCode.ACTION_FAILED), { args });
      return;
    }
    const vm = ev.vm;
    // A node attribute is about this host, so the host's own events may set it too.
    if (parsed.kind !== 'exec' && parsed.kind !== 'pacemaker-attr' && !vm) {
      this.report(ev, action, new VesperError(ErrorCode.ACTION_FAILED, `${action} needs a VM; this event is the host's own`), { args });
      return;
    }
    // Before the rate limit: a mapping mistake must not use up the VM's actions.
    if (parsed.kind === 'pacemaker-fail' && parsed.resource === undefined && this.pacemaker.resourceOf(vm) === undefined) {
      this.report(ev, action, new VesperError(ErrorCode.PACEMAKER_MAPPING, noResourceMessage(vm)), { args });
      return;
    }
    if (parsed.kind === 'failover' && !parsed.standbyUri && !this.o.standbyUri) {
      this.report(
        ev,
        action,
        new VesperError(ErrorCode.ACTION_FAILED, 'failover needs --standby-uri URI (or actions.standby_uri in the config)'),
        { args },
      );
      return;
    }
    const lane = this.lanes.get(vm);
    if (parsed.kind !== 'exec' && lane) {
      const same = [lane.running, ...lane.waiting].find((j) => j !== null && sameAction(j.parsed, parsed));
      if (same) {
        this.report(ev, action, null, { args, coalesced: true, into: { eventId: same.ev.id ?? null, running: same === lane.running } });
        return;
      }
    }
    if (lane && lane.waiting.length >= MAX_WAITING) {
      this.report(ev, action, new VesperError(ErrorCode.ACTION_RATE_LIMITED, `${MAX_WAITING} actions already wait for ${vm}`), { args });
      return;
    }
    const now = Date.now();
    if (!this.o.limiter.allow(vm, now)) {
      const l = this.o.limiter;
      this.report(
        ev,
        action,
        new VesperError(
          ErrorCode.ACTION_RATE_LIMITED,
          `${action} for ${vm || 'the host'} refused: at most ${l.max} actions per ${l.windowMs} ms per VM`,
        ),
        { args, max: l.max, windowMs: l.windowMs, nextAllowedAt: l.nextAllowedAt(vm, now), refused: l.refused(vm) },
      );
      return;
    }
    const job: Job = { ev, action, args, parsed };
    if (lane) lane.waiting.push(job);
    else this.lanes.set(vm, { running: null, waiting: [job] });
    this.pump(vm);
  }

  private pump(vm: string): void {
    const lane = this.lanes.get(vm);
    if (!lane || lane.running) return;
    const job = lane.waiting.shift();
    if (!job) {
      this.lanes.delete(vm);
      if (this.lanes.size === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
      return;
    }
    lane.running = job;
    const started = Date.now();
    this.log.info({ vm, action: job.action, args: job.args, eventId: job.ev.id }, 'action started');
    this.execute(job)
      .catch((err: unknown) => ({ error: errorOf(err, ErrorCode.ACTION_FAILED), detail: detailOf(err) }))
      .then(({ error, detail }) => {
        this.report(job.ev, job.action, error, { args: job.args, ...detail, durationMs: Date.now() - started });
      })
      .catch(() => undefined)
      .finally(() => {
        lane.running = null;
        this.pump(vm);
      });
  }

  /** Runs one action; resolves with its detail, and an error when it did not succeed. */
  private async execute(job: Job): Promise<{ error: VesperError | null; detail: Record<string, unknown> }> {
    const p = job.parsed;
    const vm = job.ev.vm;
    switch (p.kind) {
      case 'exec': {
        const r = await runExec(job.ev, { command: p.command, args: p.args, timeoutMs: this.o.execTimeoutMs, cwd: this.o.execCwd });
        const detail = { command: p.command, ...r };
        if (r.timedOut)
          return {
            error: new VesperError(ErrorCode.ACTION_FAILED, `exec ${p.command} timed out after ${this.o.execTimeoutMs} ms`),
            detail,
          };
        if (r.exitCode !== 0)
          return {
            error: new VesperError(
              ErrorCode.ACTION_FAILED,
              r.signal ? `exec ${p.command} was killed by ${r.signal}` : `exec ${p.command} exited with status ${r.exitCode}`,
            ),
            detail,
          };
        return { error: null, detail };
      }
      case 'restart': {
        const r = await this.bounded(`restart of ${vm}`, async () => restartDomain(await this.o.hypervisorFor(), vm));
        return { error: null, detail: { destroyed: r.destroyed, stateBefore: r.stateBefore } };
      }
      case 'failover': {
        const standbyUri = p.standbyUri ?? this.o.standbyUri!;
        const r = await this.bounded(`failover of ${vm}`, async () => {
          // The standby first: fencing a VM that then cannot be started anywhere would be an
          // outage of our own making.
          let standby: Hypervisor;
          try {
            standby = await this.o.hypervisorFor(standbyUri);
          } catch (err) {
            throw new VesperError(
              ErrorCode.ACTION_FAILED,
              `failover of ${vm}: standby ${standbyUri} unreachable, nothing fenced: ${(err as Error).message}`,
            );
          }
          let primary: Hypervisor;
          try {
            primary = await this.o.hypervisorFor();
          } catch (err) {
            throw new VesperError(
              ErrorCode.PRIMARY_UNREACHABLE,
              `failover of ${vm}: the primary's libvirt cannot be reached, so ${vm} cannot be fenced or confirmed stopped; nothing started (a host failure is for Pacemaker and its STONITH): ${(err as Error).message}`,
            );
          }
          return failover({
            vm,
            primary,
            standby,
            standbyName: p.standbyName,
            lock: this.o.lock,
            owner: this.owner,
            confirmTimeoutMs: this.o.confirmTimeoutMs ?? 60_000,
            waitStopped: this.o.waitStopped,
            requireLockManager: this.o.requireLockManager,
            log: this.log,
          });
        });
        return {
          error: null,
          detail: { standbyUri, standbyName: r.standbyName, destroyed: r.destroyed, steps: r.steps, fence: r.fence, guard: r.guard },
        };
      }
      case 'pacemaker-fail':
        return this.pacemaker.fail(vm, { resource: p.resource, node: p.node });
      case 'pacemaker-attr':
        return this.pacemaker.setAttribute(vm, { name: p.name, value: p.value, node: p.node });
    }
  }

  /** fn, or a VSP_ACTION_FAILED once actionTimeoutMs have passed (the VM's next action may then run). */
  private bounded<T>(what: string, fn: () => Promise<T>): Promise<T> {
    const ms = this.o.actionTimeoutMs ?? 10 * 60_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new VesperError(ErrorCode.ACTION_FAILED, `${what} did not finish within ${ms} ms`)), ms);
    });
    return Promise.race([fn(), timeout]).finally(() => clearTimeout(timer));
  }

  private report(ev: VesperEvent, action: string, error: VesperError | null, detail: Record<string, unknown>): void {
    const result: ActionResult = error
      ? { action, ok: false, error: { code: error.code, message: error.message }, detail }
      : { action, ok: true, detail };
    const log = { vm: ev.vm, action, eventId: ev.id, ok: result.ok, code: result.error?.code };
    if (error) this.log.warn({ ...log, err: error.message }, 'action failed');
    else this.log.info(log, 'action done');
    try {
      this.o.onResult(ev, result);
    } catch (err) {
      this.log.error({ ...log, err: (err as Error)?.message }, 'action result handler threw');
    }
  }
}

function sameAction(a: ParsedAction, b: ParsedAction): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === 'failover' && b.kind === 'failover') return a.standbyUri === b.standbyUri && a.standbyName === b.standbyName;
  if (a.kind === 'pacemaker-fail' && b.kind === 'pacemaker-fail') return a.resource === b.resource && a.node === b.node;
  if (a.kind === 'pacemaker-attr' && b.kind === 'pacemaker-attr') return a.name === b.name && a.value === b.value && a.node === b.node;
  return a.kind === 'restart';
}

function errorOf(err: unknown, code: string): VesperError {
  return VesperError.from(err, code);
}

function detailOf(err: unknown): Record<string, unknown> {
  return err instanceof FailoverError ? { steps: err.steps } : {};
}
