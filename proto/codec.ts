import './pb.js';
import { vesper } from './gen/vesper.js';
import { ErrorCode, VesperError } from './errors.js';
import { readRecordHeader } from './batch.js';

export const v1 = vesper.v1;
/** Message types, for signatures elsewhere: `pb.IRecord`, `pb.Frame`, ... */
export type { vesper } from './gen/vesper.js';
import type { vesper as V } from './gen/vesper.js';
export declare namespace pb {
  type IFrame = V.v1.IFrame;
  type Frame = V.v1.Frame;
  type IRecord = V.v1.IRecord;
  type Record = V.v1.Record;
  type IHello = V.v1.IHello;
  type Hello = V.v1.Hello;
  type IHelloAck = V.v1.IHelloAck;
  type ILoadedProbe = V.v1.ILoadedProbe;
  type LoadedProbe = V.v1.LoadedProbe;
  type IProbeModule = V.v1.IProbeModule;
  type IParamValue = V.v1.IParamValue;
  type ILoadProbe = V.v1.ILoadProbe;
  type ICapabilities = V.v1.ICapabilities;
  type ISignalEvent = V.v1.ISignalEvent;
  type IOomEvent = V.v1.IOomEvent;
  type IExecEvent = V.v1.IExecEvent;
  type IExitEvent = V.v1.IExitEvent;
  type IForkEvent = V.v1.IForkEvent;
  type IPsiEvent = V.v1.IPsiEvent;
  type IKprobeEvent = V.v1.IKprobeEvent;
  type IKprobeField = V.v1.IKprobeField;
  type IHeartbeatEvent = V.v1.IHeartbeatEvent;
  type ILossEvent = V.v1.ILossEvent;
  type IProbeFault = V.v1.IProbeFault;
  type IError = V.v1.IError;
}

export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_FRAME_BYTES = 1 << 20;

/** Encodes one Frame message to its protobuf bytes (no framing around it). */
export function encodeMessage(msg: pb.IFrame): Uint8Array {
  return v1.Frame.encode(msg).finish();
}

/** Decodes one Frame; a peer's bad bytes become a VSP_MESSAGE_DECODE error, never a crash. */
export function decodeMessage(payload: Uint8Array): pb.Frame {
  try {
    return v1.Frame.decode(payload);
  } catch (err) {
    throw new VesperError(ErrorCode.MESSAGE_DECODE, `undecodable message: ${(err as Error).message}`, '', { cause: err });
  }
}

/** records that decodeRecord could not decode: their header only */
const undecodable = new WeakSet<object>();

/**
 * A record's full decode, for the places that read a record long after it arrived (a payload
 * asked for by a subscriber, a stored row). The ingest path checks only a record's header, so
 * a guest can send a record whose header is sound and whose body is not: that record comes
 * back with its header and no payload (isUndecodable tells it apart), never as an exception
 * thrown into whatever was reading it.
 */
export function decodeRecord(bytes: Uint8Array): pb.Record {
  try {
    return v1.Record.decode(bytes);
  } catch {
    const h = readRecordHeader(bytes);
    const r = new v1.Record(h ? { seq: h.seq, monoNs: h.monoNs, wallNs: h.wallNs, handle: h.handle, eventId: h.eventId } : {});
    undecodable.add(r);
    return r;
  }
}

/** Whether decodeRecord gave up on this record's body. */
export function isUndecodable(r: pb.Record): boolean {
  return undecodable.has(r);
}

export function bodyOf(f: pb.Frame): string {
  return f.body ?? '';
}
