// What the agent's main thread and a probe worker (probe-host.ts) share: the slots of their
// SharedArrayBuffer and the messages they pass. Types and constants only: both sides import it.
import type { MessagePort } from 'node:worker_threads';
import type { Capabilities } from '../../contract/probe-api.js';

// Int32 slots of one worker's shared buffer.
/** the main thread answered a synchronous call */
export const S_REPLY = 0;
/** bumped by the worker each time it comes back from the probe's code */
export const S_TICK = 1;
/** 1 while the worker blocks on the main thread in a synchronous call */
export const S_WAITING = 2;
/** events the worker has handled */
export const S_DONE = 3;
export const SLOTS = 4;

/** Items the worker sends, in the order the probe made them. */
export type WorkerOut =
  | ['rec', number, number, string, unknown, number] // handle, event id, payload key, payload, mono ns
  | ['log', number, string]
  | ['lost', number, number]
  | ['fault', number, string, string]; // handle, message, stack

export interface WireError {
  code?: string;
  message: string;
  detail?: string;
}

export interface ProbeWorkerData {
  rpc: MessagePort;
  shared: SharedArrayBuffer;
  /** one Int32 slot: 1 while the agent's ring drops records */
  ring: SharedArrayBuffer;
  caps: Capabilities;
  tracefsPath: string;
  name: string;
  events: { id: number; name: string; payload: string }[];
  code: Uint8Array;
}

/** main thread -> worker */
export type ToWorker =
  | { t: 'ev'; b: unknown[] } // handler id, payload, handler id, payload, ...
  | { t: 'start'; id: number; handle: number; instance?: number; params?: unknown }
  | { t: 'stop'; id: number; handle: number };

/** worker -> main thread */
export type FromWorker =
  | { t: 'out'; items: WorkerOut[] }
  | { t: 'done'; id: number; value?: unknown; err?: WireError }
  | { t: 'ready' }
  | { t: 'bad'; err: WireError };

/** worker -> main thread, on the worker's rpc port: a synchronous context call */
export interface RpcCall {
  op: string;
  args: unknown[];
}
