// Counts of stored events by VM, plugin, event and disposition, for the metrics. The framework
// adds every newly stored event here on the ingest path, so adding is a comparison with the
// previous event's key (consecutive events mostly share it) and an array increment; the label
// sets are built only when the metrics are read.
import type { Disposition, VesperEvent } from './event.js';

const INDEX: Record<Disposition, number> = { notify: 0, discard: 1, action: 2 };
export const DISPOSITIONS: readonly Disposition[] = ['notify', 'discard', 'action'];

export interface TallyRow {
  vm: string;
  plugin: string;
  event: string;
  disposition: Disposition;
  count: number;
}

export class EventTally {
  /** vm → plugin → event → counts by disposition */
  private readonly byVm = new Map<string, Map<string, Map<string, Float64Array>>>();
  private lastVm: string | null = null;
  private lastPlugin: string | null = null;
  private lastEvent: string | null = null;
  private last: Float64Array | null = null;

  add(ev: VesperEvent): void {
    let c = this.last;
    if (c === null || ev.event !== this.lastEvent || ev.plugin !== this.lastPlugin || ev.vm !== this.lastVm) {
      c = this.countsOf(ev.vm, ev.plugin, ev.event);
      this.last = c;
      this.lastVm = ev.vm;
      this.lastPlugin = ev.plugin;
      this.lastEvent = ev.event;
    }
    c[INDEX[ev.disposition ?? 'notify']]!++;
  }

  private countsOf(vm: string, plugin: string, event: string): Float64Array {
    let p = this.byVm.get(vm);
    if (!p) this.byVm.set(vm, (p = new Map<string, Map<string, Float64Array>>()));
    let e = p.get(plugin);
    if (!e) p.set(plugin, (e = new Map<string, Float64Array>()));
    let c = e.get(event);
    if (!c) e.set(event, (c = new Float64Array(3)));
    return c;
  }

  /** Every (vm, plugin, event, disposition) seen, with its count (dispositions never seen left out). */
  rows(): TallyRow[] {
    const out: TallyRow[] = [];
    for (const [vm, p] of this.byVm)
      for (const [plugin, e] of p)
        for (const [event, c] of e)
          for (let i = 0; i < 3; i++) if (c[i]! > 0) out.push({ vm, plugin, event, disposition: DISPOSITIONS[i]!, count: c[i]! });
    return out;
  }

  /** Forgets a VM's counts (a VM gone from the table: its series go with it). */
  forget(vm: string): void {
    this.byVm.delete(vm);
    this.last = null;
  }
}
