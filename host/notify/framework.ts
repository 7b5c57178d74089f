// The failure-notification framework: one entry for every event of every plugin (guest probes,
// libvirt, channel liveness), one filter deciding notify / discard / action, one store, one
// queue for whoever watches, one place to set plugin parameters. The monitoring side never
// talks to a plugin directly: it sets filters and parameters here and reads the queue.
//
// ingest() is synchronous and runs for every batch from every guest, so it allocates nothing
// per event: the filter answers from its cache, the registry check is two map lookups, and the
// events go to the store in the array they came in.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { VesperEvent } from './event.js';
import { FilterTable } from './filter.js';
import { vmLabel } from '../../contract/names.js';
import { checkParamValue } from './params.js';
import type { EventTally } from './event-tally.js';
import { EventQueue } from './queue.js';
import { PluginRegistry, type Plugin, type PluginHandle } from './registry.js';

/** Where the framework stores events (store/event-store.ts's EventStore in the daemon). */
export interface EventSink {
  /** Stores the events in one go; answers those newly stored (ids set) and how many it already had. */
  append(events: VesperEvent[]): { stored: VesperEvent[]; duplicates: number };
}

/** Who starts the filters' actions (actions/runner.ts's ActionRunner in the daemon). */
export interface ActionDispatch {
  /** Starts an action for an event. Must not block; failures are counted, never passed to ingest. */
  run(ev: VesperEvent, action: string, args: string[]): void;
}

export interface FrameworkOptions {
  registry?: PluginRegistry;
  filters?: FilterTable;
  queue?: EventQueue;
  /** without a store, every event counts as new (nothing is de-duplicated) */
  store?: EventSink;
  actions?: ActionDispatch;
  /** counts of stored events by vm, plugin, event and disposition (the metrics'), if wanted */
  tally?: EventTally;
}

export interface FrameworkCounters {
  /** events handed to ingest() */
  ingested: number;
  /** events the store took as new */
  stored: number;
  /** events the store already had (resent): not published again */
  duplicates: number;
  /** new events the filter discarded (stored; published only while a follower asks for them) */
  discarded: number;
  /** new events published to the queue (notify and action) */
  notified: number;
  /** actions handed to the runner that did not throw */
  actionsRun: number;
  /** actions that threw or had no runner, and async ones that rejected later (also in actionsRun) */
  actionFailures: number;
  /** events from a (vm, plugin) that is not registered (accepted all the same) */
  unregisteredPlugin: number;
  /** ingest() calls whose store call threw (nothing of them was published) */
  storeFailures: number;
}

/** Current parameter values of a plugin, defaults filled in. Parameters with neither are absent. */
export interface PluginParamValues {
  /** the values for the whole plugin */
  common: Record<string, string>;
  /** per instance: the common values with that instance's own values over them */
  instances: Record<string, string>[];
}

interface ParamState {
  common: Map<string, string>;
  perInstance: Map<number, Map<string, string>>;
  /** setParam calls for one plugin run one after the other */
  tail: Promise<void>;
}

export class NotificationFramework {
  readonly registry: PluginRegistry;
  readonly filters: FilterTable;
  readonly queue: EventQueue;
  private readonly store: EventSink | null;
  private readonly actions: ActionDispatch | null;
  private readonly tally: EventTally | null;
  private readonly params = new Map<PluginHandle, ParamState>();
  private readonly c: FrameworkCounters = {
    ingested: 0,
    stored: 0,
    duplicates: 0,
    discarded: 0,
    notified: 0,
    actionsRun: 0,
    actionFailures: 0,
    unregisteredPlugin: 0,
    storeFailures: 0,
  };

  constructor(opts: FrameworkOptions = {}) {
    this.registry = opts.registry ?? new PluginRegistry();
    this.filters = opts.filters ?? new FilterTable();
    this.queue = opts.queue ?? new EventQueue();
    this.store = opts.store ?? null;
    this.actions = opts.actions ?? null;
    this.tally = opts.tally ?? null;
    // A plugin's parameter values live as long as its registration.
    this.registry.on('unregistered', (p) => this.params.delete(p.handle));
  }

  /**
   * Filters, stores (all events, discarded ones too, in one store call) and publishes a batch;
   * starts the actions of action events. Events already stored are neither published nor acted
   * on again. Throws only if the store does (then nothing of the batch was published).
   */
  /** Subscribers get what was published without waiting for the queue's wake-up. */
  publishNow(): void {
    this.queue.wakeNow();
  }

  ingest(events: VesperEvent[]): { stored: number; duplicates: number } {
    const filters = this.filters;
    const registry = this.registry;
    const n = events.length;
    let unregistered = 0;
    // consecutive events mostly come from the same plugin: check the registry once per run
    let lastVm: string | null = null;
    let lastPlugin: string | null = null;
    let lastKnown = true;
    for (let i = 0; i < n; i++) {
      const ev = events[i]!;
      ev.disposition = filters.decide(ev).decision.kind;
      if (ev.vm !== lastVm || ev.plugin !== lastPlugin) {
        lastVm = ev.vm;
        lastPlugin = ev.plugin;
        lastKnown = registry.has(ev.vm, ev.plugin);
      }
      if (!lastKnown) unregistered++;
    }
    this.c.ingested += n;
    this.c.unregisteredPlugin += unregistered;

    let fresh: VesperEvent[] = events;
    let duplicates = 0;
    if (this.store !== null) {
      try {
        ({ stored: fresh, duplicates } = this.store.append(events));
      } catch (err) {
        this.c.storeFailures++;
        throw err;
      }
    }

    const queue = this.queue;
    const tally = this.tally;
    let discarded = 0;
    let notified = 0;
    for (let i = 0; i < fresh.length; i++) {
      const ev = fresh[i]!;
      const d = ev.disposition;
      if (tally !== null) tally.add(ev);
      if (d === 'discard') {
        discarded++;
        if (queue.discardedWanted > 0) queue.publish(ev); // for `events -f --all`; not acted on
        continue;
      }
      queue.publish(ev);
      notified++;
      if (d === 'action') this.startAction(ev);
    }
    this.c.stored += fresh.length;
    this.c.duplicates += duplicates;
    this.c.discarded += discarded;
    this.c.notified += notified;
    return { stored: fresh.length, duplicates };
  }

  private startAction(ev: VesperEvent): void {
    // Rare: ask the filter again (a cache hit) rather than keep a decision per event.
    const decision = this.filters.decide(ev).decision;
    if (decision.kind !== 'action' || this.actions === null) {
      this.c.actionFailures++;
      return;
    }
    try {
      const r: unknown = this.actions.run(ev, decision.action, decision.args);
      // A runner typed void may still be async; its rejection is a failure, not an unhandled one.
      if (r !== null && typeof r === 'object' && typeof (r as PromiseLike<unknown>).then === 'function')
        (r as PromiseLike<unknown>).then(undefined, () => {
          this.c.actionFailures++;
        });
      this.c.actionsRun++;
    } catch {
      this.c.actionFailures++;
    }
  }

  /** A snapshot of the counters. */
  counters(): FrameworkCounters {
    return { ...this.c };
  }

  /**
   * Sets one parameter of a plugin, for the whole plugin (instance null) or for one instance
   * (only parameters marked perInstance). The value is checked against the parameter's type,
   * handed to the plugin, and kept once the plugin accepted it. Calls for one plugin are applied
   * in the order they were made.
   */
  setParam(vm: string, plugin: string, instance: number | null, name: string, value: string): Promise<void> {
    let p: Plugin;
    try {
      p = this.pluginOrThrow(vm, plugin);
      const spec = p.params.find((x) => x.name === name);
      if (!spec)
        throw new VesperError(
          ErrorCode.PARAM_UNKNOWN,
          `plugin ${plugin} on ${vmLabel(vm)} has no parameter ${JSON.stringify(name)} (it has: ${p.params.map((x) => x.name).join(', ') || 'none'})`,
        );
      if (instance !== null) {
        if (!spec.perInstance)
          throw new VesperError(
            ErrorCode.PARAM_UNKNOWN,
            `parameter ${name} of plugin ${plugin} is set for the whole plugin, not per instance (give no instance)`,
          );
        if (!Number.isInteger(instance) || instance < 0 || instance >= p.instances)
          throw new VesperError(
            ErrorCode.PARAM_UNKNOWN,
            `plugin ${plugin} on ${vmLabel(vm)} has no instance ${instance} (it has ${p.instances === 1 ? 'instance 0' : `instances 0 to ${p.instances - 1}`})`,
          );
      }
      checkParamValue(name, spec.type, value);
    } catch (err) {
      return Promise.reject(err);
    }
    const state = this.stateOf(p);
    const apply = async (): Promise<void> => {
      // The plugin may have been unregistered while an earlier call was applied.
      if (this.params.get(p.handle) !== state)
        throw new VesperError(ErrorCode.PLUGIN_NOT_FOUND, `plugin ${plugin} on ${vmLabel(vm)} went away before ${name} was set`);
      if (p.setParams) await p.setParams(instance, { [name]: value });
      if (this.params.get(p.handle) !== state) return; // gone meanwhile: its values went with it
      if (instance === null) state.common.set(name, value);
      else {
        let own = state.perInstance.get(instance);
        if (!own) state.perInstance.set(instance, (own = new Map<string, string>()));
        own.set(name, value);
      }
    };
    const done = state.tail.then(apply, apply);
    state.tail = done.then(
      () => undefined,
      () => undefined,
    );
    return done;
  }

  /** The plugin's current parameter values, defaults filled in. */
  getParams(vm: string, plugin: string): PluginParamValues {
    const p = this.pluginOrThrow(vm, plugin);
    const state = this.params.get(p.handle);
    const common: Record<string, string> = {};
    for (const spec of p.params) {
      const v = state?.common.get(spec.name) ?? spec.default;
      if (v !== undefined) common[spec.name] = v;
    }
    const instances: Record<string, string>[] = [];
    for (let i = 0; i < p.instances; i++) {
      const own = state?.perInstance.get(i);
      instances.push(own ? { ...common, ...Object.fromEntries(own) } : { ...common });
    }
    return { common, instances };
  }

  private pluginOrThrow(vm: string, plugin: string): Plugin {
    const p = this.registry.get(vm, plugin);
    if (p) return p;
    const there = this.registry.list(vm).map((x) => x.name);
    throw new VesperError(
      ErrorCode.PLUGIN_NOT_FOUND,
      `no plugin ${JSON.stringify(plugin)} on ${vmLabel(vm)} (registered there: ${there.join(', ') || 'none'})`,
    );
  }

  private stateOf(p: Plugin): ParamState {
    let s = this.params.get(p.handle);
    if (!s) this.params.set(p.handle, (s = { common: new Map(), perInstance: new Map(), tail: Promise.resolve() }));
    return s;
  }
}
