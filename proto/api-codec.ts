// The manager's local API on the wire: ApiFrame messages (proto/api.proto) in the same framing
// as the guest channel. One ApiLink per connected socket, used by both ends.
import type { Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import './pb.js';
import { vesper as vesperApi } from './gen/api.js';
import { ErrorCode, VesperError } from './errors.js';
import { FrameDecoder, encodeFrame } from './frame.js';

export const api = vesperApi.api.v1;
import type { vesper as A } from './gen/api.js';
export declare namespace apipb {
  type IApiFrame = A.api.v1.IApiFrame;
  type ApiFrame = A.api.v1.ApiFrame;
  type IRequest = A.api.v1.IRequest;
  type Request = A.api.v1.Request;
  type IReply = A.api.v1.IReply;
  type Reply = A.api.v1.Reply;
  type IEvent = A.api.v1.IEvent;
  type IEvents = A.api.v1.IEvents;
  type Event = A.api.v1.Event;
  type IFilterRule = A.api.v1.IFilterRule;
  type FilterRule = A.api.v1.FilterRule;
  type IVmSummary = A.api.v1.IVmSummary;
  type VmSummary = A.api.v1.VmSummary;
  type IVmDetail = A.api.v1.IVmDetail;
  type IAttachedProbe = A.api.v1.IAttachedProbe;
  type IProbeInfo = A.api.v1.IProbeInfo;
  type IHostEvent = A.api.v1.IHostEvent;
  type IAnalyze = A.api.v1.IAnalyze;
  type ISinkState = A.api.v1.ISinkState;
}

/** API messages are small; a follower's event batch is capped well below this. */
export const API_MAX_FRAME_BYTES = 4 << 20;

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface ApiLink {
  on(ev: 'frame', fn: (f: apipb.ApiFrame) => void): this;
  on(ev: 'close', fn: () => void): this;
  on(ev: 'protocolError', fn: (e: VesperError) => void): this;
}

/** A framed ApiFrame stream over a connected socket. */
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class ApiLink extends EventEmitter {
  private readonly decoder: FrameDecoder;
  closed = false;

  constructor(readonly socket: Socket) {
    super();
    this.decoder = new FrameDecoder({
      maxFrameBytes: API_MAX_FRAME_BYTES,
      onFrame: (payload) => {
        let f: apipb.ApiFrame;
        try {
          f = api.ApiFrame.decode(payload);
        } catch (err) {
          this.emit('protocolError', new VesperError(ErrorCode.MESSAGE_DECODE, `undecodable API message: ${(err as Error).message}`));
          return;
        }
        this.emit('frame', f);
      },
      onError: (e) => this.emit('protocolError', e),
    });
    socket.on('data', (c: Buffer) => this.decoder.push(c));
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => {
      this.closed = true;
      this.emit('close');
    });
  }

  /** Sends one frame; false when the socket's buffer is full (wait for 'drain'). */
  send(f: apipb.IApiFrame): boolean {
    if (this.closed || this.socket.destroyed) return false;
    return this.socket.write(encodeFrame(api.ApiFrame.encode(f).finish()));
  }

  /** Bytes queued in the socket, not yet taken by the kernel. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  close(): void {
    this.socket.end();
    this.socket.destroySoon?.();
  }
}

export function errorReply(err: unknown): apipb.IReply {
  const e = VesperError.from(err);
  return { done: true, error: { code: e.code, message: e.message, detail: e.detail } };
}
