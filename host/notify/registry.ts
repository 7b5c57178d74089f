// The plugins the framework knows: who may produce events, what events, with which parameters,
// in how many instances. A plugin is a probe attached to one VM or a host-side source (libvirt,
// channel liveness) registered per VM or for the host ('' as vm). Plugins come and go while
// the manager runs — a probe attached or detached, a VM that disappears — so registration hands
// back a handle, and the handle, never reused, is what unregisters.
import { EventEmitter } from 'node:events';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { isVmName, nameProblem, vmLabel } from '../../contract/names.js';
import { PARAM_TYPES, checkParamValue, type PluginParamType } from './params.js';

export type PluginKind = 'probe' | 'host';
export type PluginHandle = number;

export interface PluginEvent {
  name: string;
  description?: string;
}

export interface PluginParam {
  name: string;
  type: PluginParamType;
  /** text form, as an operator would type it; absent: the parameter has no value until set */
  default?: string;
  description?: string;
  /** may be set per instance as well as for the whole plugin */
  perInstance?: boolean;
}

export interface PluginSpec {
  /** libvirt domain name; '' for a host-wide plugin */
  vm: string;
  name: string;
  kind: PluginKind;
  events: PluginEvent[];
  params: PluginParam[];
  /** how many instances the plugin runs (instance ids 0 .. instances-1) */
  instances: number;
  /**
   * Applies parameters (text values, already checked against their types) to the whole plugin
   * (instance null) or to one instance. Rejecting means the values did not take effect.
   */
  setParams?: (instance: number | null, params: Record<string, string>) => Promise<void>;
}

/** A registered plugin: a frozen copy of its spec with its handle. */
export interface Plugin extends Readonly<Omit<PluginSpec, 'events' | 'params'>> {
  readonly handle: PluginHandle;
  readonly events: readonly Readonly<PluginEvent>[];
  readonly params: readonly Readonly<PluginParam>[];
}

export const MAX_INSTANCES = 65_536;

interface RegistryEvents {
  registered: [plugin: Plugin];
  unregistered: [plugin: Plugin];
}

export class PluginRegistry extends EventEmitter<RegistryEvents> {
  private nextHandle = 1;
  private readonly byHandle = new Map<PluginHandle, Plugin>();
  // vm -> name -> plugin: two lookups on interned strings, no key built per event
  private readonly byVm = new Map<string, Map<string, Plugin>>();

  /** Registers a plugin; refuses an invalid spec and a second plugin of the same name on the same VM. */
  register(spec: PluginSpec): PluginHandle {
    this.validate(spec);
    const existing = this.get(spec.vm, spec.name);
    if (existing)
      throw new VesperError(
        spec.kind === 'probe' ? ErrorCode.PROBE_ALREADY_LOADED : ErrorCode.INTERNAL,
        `plugin ${spec.name} is already registered for ${vmLabel(spec.vm)} (handle ${existing.handle}); unregister it first`,
      );
    const plugin = this.freeze(spec);
    let names = this.byVm.get(plugin.vm);
    if (!names) this.byVm.set(plugin.vm, (names = new Map<string, Plugin>()));
    names.set(plugin.name, plugin);
    this.byHandle.set(plugin.handle, plugin);
    this.emit('registered', plugin);
    return plugin.handle;
  }

  /** Removes the plugin with this handle; false if no such handle is registered (already gone). */
  unregister(handle: PluginHandle): boolean {
    const plugin = this.byHandle.get(handle);
    if (!plugin) return false;
    this.byHandle.delete(handle);
    const names = this.byVm.get(plugin.vm);
    names?.delete(plugin.name);
    if (names?.size === 0) this.byVm.delete(plugin.vm);
    this.emit('unregistered', plugin);
    return true;
  }

  /** Removes every plugin of a VM (it disappeared); returns how many. */
  unregisterVm(vm: string): number {
    const names = this.byVm.get(vm);
    if (!names) return 0;
    const handles = [...names.values()].map((p) => p.handle);
    for (const h of handles) this.unregister(h);
    return handles.length;
  }

  /** All plugins, or those of one VM ('' for host-wide ones), in registration order. */
  list(vm?: string): Plugin[] {
    if (vm === undefined) return [...this.byHandle.values()];
    const names = this.byVm.get(vm);
    return names ? [...names.values()] : [];
  }

  get(vm: string, name: string): Plugin | undefined {
    return this.byVm.get(vm)?.get(name);
  }

  byHandleOf(handle: PluginHandle): Plugin | undefined {
    return this.byHandle.get(handle);
  }

  /** On the ingest path: no allocation. */
  has(vm: string, name: string): boolean {
    return this.byVm.get(vm)?.has(name) ?? false;
  }

  get size(): number {
    return this.byHandle.size;
  }

  private validate(spec: PluginSpec): void {
    const problems: string[] = [];
    if (typeof spec.vm !== 'string' || !isVmName(spec.vm)) problems.push(`vm ${JSON.stringify(spec.vm)} is not a VM name`);
    const nameWhy = nameProblem('plugin name', spec.name);
    if (nameWhy) problems.push(nameWhy);
    if (spec.kind !== 'probe' && spec.kind !== 'host') problems.push(`kind ${JSON.stringify(spec.kind)} is not probe or host`);
    if (!Number.isInteger(spec.instances) || spec.instances < 1 || spec.instances > MAX_INSTANCES)
      problems.push(`instances ${spec.instances} is not an integer from 1 to ${MAX_INSTANCES}`);
    if (!Array.isArray(spec.events)) problems.push('events is not a list');
    if (!Array.isArray(spec.params)) problems.push('params is not a list');
    const events = new Set<string>();
    for (const e of Array.isArray(spec.events) ? spec.events : []) {
      const why = nameProblem('event name', e.name);
      if (why) problems.push(why);
      else if (events.has(e.name)) problems.push(`event ${e.name} is listed twice`);
      events.add(e.name);
    }
    const params = new Set<string>();
    for (const p of Array.isArray(spec.params) ? spec.params : []) {
      const why = nameProblem('parameter name', p.name);
      if (why) problems.push(why);
      else if (params.has(p.name)) problems.push(`parameter ${p.name} is listed twice`);
      params.add(p.name);
      if (!PARAM_TYPES.includes(p.type))
        problems.push(`parameter ${p.name} has type ${JSON.stringify(p.type)}, not one of ${PARAM_TYPES.join(', ')}`);
      else if (p.default !== undefined) {
        try {
          checkParamValue(p.name, p.type, p.default);
        } catch (err) {
          problems.push(`default of ${(err as Error).message}`);
        }
      }
    }
    if (problems.length > 0)
      throw new VesperError(
        spec.kind === 'probe' ? ErrorCode.PROBE_BAD_MANIFEST : ErrorCode.INTERNAL,
        `cannot register plugin ${JSON.stringify(spec.name)} for ${vmLabel(String(spec.vm))}: ${problems.join('; ')}`,
      );
  }

  private freeze(spec: PluginSpec): Plugin {
    const plugin: Plugin = {
      handle: this.nextHandle++,
      vm: spec.vm,
      name: spec.name,
      kind: spec.kind,
      instances: spec.instances,
      events: Object.freeze(spec.events.map((e) => Object.freeze({ ...e }))),
      params: Object.freeze(spec.params.map((p) => Object.freeze({ ...p }))),
      ...(spec.setParams ? { setParams: spec.setParams } : {}),
    };
    return Object.freeze(plugin);
  }
}
