// One load of a probe module and the instances it started, as the runtime (runtime.ts) keeps
// them: what each instance attached, so that the main thread can release all of it.
import type { pb } from '../../proto/codec.js';
import type { TraceInstance } from '../kernel/tracefs.js';
import type { ProbeManifest } from '../../contract/probe-api.js';
import type { ProbeWorker } from './probe-worker.js';

export type Release = () => void | Promise<void>;

/** One load: its module, running in its own worker, and the instances it started. */
export interface Load {
  readonly manifest: ProbeManifest;
  readonly digest: Buffer;
  readonly worker: ProbeWorker;
  /** instances starting or loaded */
  readonly insts: Map<number, ProbeInstance>;
  /** every handle this load ever had: what its worker may emit for */
  readonly handles: Set<number>;
  readonly byEventId: Map<number, string>;
}

export class ProbeInstance {
  readonly resources: { what: string; release: Release }[] = [];
  trace: TraceInstance | null = null;
  /** trace event format id -> the worker's handler id */
  readonly traceHandlers = new Map<number, number>();
  faulted = false;
  stopped = false;
  kprobes = 0;
  /** what the kernel lacks that this instance runs without (ctx.lacks, VSP_KERNEL_LACKS) */
  readonly warnings: pb.IError[] = [];
  /** events dropped because the worker fell behind, not yet told */
  dropped = 0;
  droppedFirst = 0;

  constructor(
    readonly handle: number,
    readonly manifest: ProbeManifest,
    readonly instance: number,
    readonly paramsText: Record<string, string>,
    readonly load: Load,
    readonly digest: Buffer,
    readonly code: Uint8Array,
    readonly manifestBytes: Uint8Array,
  ) {}

  describe(): pb.ILoadedProbe {
    return {
      handle: this.handle,
      name: this.manifest.name,
      version: this.manifest.version,
      instance: this.instance,
      params: Object.entries(this.paramsText).map(([name, value]) => ({ name, value })),
      digest: this.digest,
      events: this.manifest.events.map((e) => ({ id: e.id, name: e.name })),
      warnings: this.warnings,
    };
  }
}
