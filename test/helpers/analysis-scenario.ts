// Synthetic event sequences for the analysis tests, shaped as vesperd stores them: guest records
// with the guest's wall clock (off by `skewUs`) and the host's receive time (after `transitUs`),
// payloads keyed by record kind as host/notify/record-event.ts makes them; host events (libvirt,
// channel, pacemaker, action) on the host clock with their plugins' payloads.
import type { VesperEvent } from '../../host/notify/event.js';
import { RecordEvent } from '../../host/notify/record-event.js';
import { v1 } from '../../proto/codec.js';

export const T0 = Date.UTC(2026, 10, 22, 10, 0, 0) * 1000; // µs

export interface Task {
  pid: number;
  comm: string;
}

export class Scenario {
  readonly events: VesperEvent[] = [];
  private seqs = new Map<string, number>();
  /** the agent run guest records belong to ("<boot id>/<agent pid>") */
  run = 'boot-a/300';
  /** guest clock minus true time */
  skewUs = 0;
  /** host receive time minus true time, for guest records */
  transitUs = 2000;

  constructor(readonly vm = 'web1') {}

  /** True time of `ms` milliseconds into the scenario (µs). */
  at(ms: number): number {
    return T0 + Math.round(ms * 1000);
  }

  guest(ms: number, plugin: string, event: string, payload: Record<string, unknown>, o: { transitUs?: number } = {}): VesperEvent {
    const seq = (this.seqs.get(this.run) ?? 0) + 1;
    this.seqs.set(this.run, seq);
    const e: VesperEvent = {
      vm: this.vm,
      plugin,
      instance: 0,
      event,
      guestTimeUs: this.at(ms) + this.skewUs,
      hostTimeUs: this.at(ms) + (o.transitUs ?? this.transitUs),
      source: { agentRun: this.run, seq },
      payload: { ...payload, monoNs: Math.round(ms * 1e6) },
    };
    this.events.push(e);
    return e;
  }

  host(ms: number, plugin: string, event: string, payload: Record<string, unknown> = {}): VesperEvent {
    const e: VesperEvent = {
      vm: this.vm,
      plugin,
      instance: 0,
      event,
      guestTimeUs: null,
      hostTimeUs: this.at(ms),
      source: null,
      payload,
    };
    this.events.push(e);
    return e;
  }

  signal(
    ms: number,
    sig: number,
    target: Task,
    sender: Task,
    o: { code?: number; result?: number; senderParent?: Task; senderCgroup?: string; targetCgroup?: string } = {},
  ): VesperEvent {
    const code = o.code ?? 0;
    const origin = {
      ...(o.senderParent ? { senderParent: o.senderParent } : {}),
      ...(o.senderCgroup ? { senderCgroup: o.senderCgroup } : {}),
      ...(o.targetCgroup ? { targetCgroup: o.targetCgroup } : {}),
    };
    return this.guest(ms, 'signal', 'signal', {
      signal: { sig, code, errno: 0, result: o.result ?? 0, group: code <= 0, target, sender, senderIsKernel: code > 0, ...origin },
    });
  }

  exit(ms: number, t: Task, o: { signal?: number; code?: number; cgroup?: string; filename?: string } = {}): VesperEvent {
    return this.guest(ms, 'process', 'exit', {
      exit: {
        task: t,
        exitCode: o.code ?? 0,
        signal: o.signal ?? 0,
        codeKnown: true,
        filename: o.filename ?? `/usr/sbin/${t.comm}`,
        thread: false,
        ...(o.cgroup ? { cgroup: o.cgroup } : {}),
      },
    });
  }

  exec(ms: number, t: Task, o: { parent?: Task; cgroup?: string; filename?: string } = {}): VesperEvent {
    return this.guest(ms, 'process', 'exec', {
      exec: {
        task: t,
        filename: o.filename ?? `/usr/sbin/${t.comm}`,
        oldPid: t.pid,
        ...(o.parent ? { parent: o.parent } : {}),
        ...(o.cgroup ? { cgroup: o.cgroup } : {}),
      },
    });
  }

  /** Beats every intervalMs from fromMs up to (not including) toMs. */
  heartbeats(fromMs: number, toMs: number, intervalMs = 1000): void {
    for (let ms = fromMs, n = 1; ms < toMs; ms += intervalMs, n++)
      this.guest(ms, 'heartbeat', 'beat', { heartbeat: { count: n, intervalMs, delayMs: 0.2 } });
  }

  oom(
    ms: number,
    victim: Task,
    o: { memcg?: string; taskMemcg?: string; constraint?: string; anonRssKb?: number; oomGroup?: string } = {},
  ): VesperEvent {
    return this.guest(ms, 'oom', 'oom_kill', {
      oom: {
        victim,
        totalVmKb: 40_000,
        anonRssKb: o.anonRssKb ?? 32_000,
        fileRssKb: 800,
        shmemRssKb: 0,
        uid: 0,
        pgtablesKb: 100,
        oomScoreAdj: 0,
        memcg: o.memcg ?? '/vesper-oom',
        taskMemcg: o.taskMemcg ?? o.memcg ?? '/vesper-oom',
        constraint: o.constraint ?? 'CONSTRAINT_MEMCG',
        trigger: victim,
        figuresComplete: true,
        ...(o.oomGroup ? { oomGroup: o.oomGroup } : {}),
      },
    });
  }

  psi(ms: number, resource = 'memory', stallUs = 150_000): VesperEvent {
    return this.guest(ms, 'psi', 'pressure', {
      psi: { resource, kind: 'some', stallUs, windowUs: 1_000_000, thresholdUs: 100_000, avg10: 4.2, source: `/proc/pressure/${resource}` },
    });
  }

  libvirt(ms: number, event: string, payload: Record<string, unknown> = {}): VesperEvent {
    return this.host(ms, 'libvirt', event, { libvirtEvent: 'lifecycle', ...payload, libvirtTimeUs: this.at(ms) });
  }

  channel(ms: number, event: string, payload: Record<string, unknown> = {}): VesperEvent {
    return this.host(ms, 'channel', event, payload);
  }

  /** The agent's last record of its run: told to stop, with systemd's state ('stopping': the guest goes down). */
  agentStopping(ms: number, systemState: string, signal = 'SIGTERM'): VesperEvent {
    return this.guest(ms, 'channel', 'agent-stopping', { agentStopping: { signal, systemState } });
  }

  /** The events ordered and numbered as the store would: by host time, ids from firstId. */
  done(firstId = 1000): VesperEvent[] {
    const out = [...this.events].sort((a, b) => a.hostTimeUs - b.hostTimeUs);
    out.forEach((e, i) => (e.id = firstId + i));
    return out;
  }
}

export const DEMO: Task = { pid: 812, comm: 'vesper-demo-svc' };

/**
 * A guest event as vesperd stores it: a RecordEvent over the encoded vesper.v1.Record (the
 * store keeps those bytes; the payload is decoded when read). Host events are returned as they are.
 */
export function asStored(e: VesperEvent): VesperEvent {
  if (!e.source) return e;
  const { monoNs, ...rest } = e.payload;
  const kind = Object.keys(rest)[0]!;
  const record = {
    seq: e.source.seq,
    monoNs: Number(monoNs ?? 0),
    wallNs: (e.guestTimeUs ?? 0) * 1000,
    handle: 1,
    eventId: 1,
    [kind]: rest[kind],
  };
  const bytes = v1.Record.encode(record).finish();
  return new RecordEvent(e.vm, e.plugin, e.instance, e.event, e.guestTimeUs, e.hostTimeUs, e.source, bytes);
}
