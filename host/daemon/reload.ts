// What a SIGHUP reload may change while vesperd runs, and what only a restart applies. The
// sections the daemon reads as it goes (filters, attach rules, log level, retention, SSH
// targets, export sinks) are taken from the new config; those its parts were built with at start (sockets,
// the store's file, libvirt, channel timings, actions, pacemaker, metrics.listen) keep their
// old values, and the log says which changed and need a restart.
import type { Config } from '../config/schema.js';

/** The setting paths a reload applies, and how each is read from a Config. */
const LIVE: Array<[string, (c: Config) => unknown]> = [
  ['daemon.log_level', (c) => c.daemon.logLevel],
  ['filters', (c) => c.filters],
  ['attach', (c) => c.attach],
  ['store.retention', (c) => c.store.retention],
  ['ssh', (c) => c.ssh],
  ['sinks', (c) => c.sinks],
];

/** The settings a reload does not apply (built into the daemon's parts at start). */
const AT_START: Array<[string, (c: Config) => unknown]> = [
  ['daemon.socket', (c) => c.daemon.socket],
  ['daemon.group', (c) => c.daemon.group],
  ['libvirt', (c) => c.libvirt],
  ['store.path', (c) => c.store.path],
  ['store.sync', (c) => c.store.sync],
  ['channel', (c) => c.channel],
  ['actions', (c) => c.actions],
  ['pacemaker', (c) => c.pacemaker ?? null],
  ['metrics', (c) => c.metrics],
];

export interface ReloadPlan {
  /** settings that differ and are applied now */
  applied: string[];
  /** settings that differ and keep their old value until a restart */
  needRestart: string[];
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Which settings differ between the config in force and the new one. */
export function planReload(now: Config, next: Config): ReloadPlan {
  return {
    applied: LIVE.filter(([, f]) => !same(f(now), f(next))).map(([k]) => k),
    needRestart: AT_START.filter(([, f]) => !same(f(now), f(next))).map(([k]) => k),
  };
}

/**
 * Takes the live settings of `next` into `now`, in place: the daemon's parts hold `now` and read
 * these sections from it as they go (the VM table its SSH targets and attach rules).
 */
export function takeLiveSettings(now: Config, next: Config): void {
  now.daemon.logLevel = next.daemon.logLevel;
  now.filters = next.filters;
  now.attach = next.attach;
  now.store.retention = next.store.retention;
  now.ssh = next.ssh;
  now.sinks = next.sinks;
}
