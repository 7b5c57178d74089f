// The requests a client has out to its agent, by request id: each answered by the frame that
// carries its id, or failed by its timeout or by the link closing.
import type { pb } from '../../proto/codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

interface Pending {
  resolve: (f: pb.Frame) => void;
  reject: (e: VesperError) => void;
  timer: NodeJS.Timeout;
}

export class RequestTable {
  private nextReq = 1;
  private readonly pending = new Map<number, Pending>();

  constructor(private readonly timeoutMs: number) {}

  /** Sends `body` with a new request id (through `send`); resolves with the agent's answer. */
  open(body: pb.IFrame, send: (f: pb.IFrame) => void): Promise<pb.Frame> {
    const reqId = this.nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(reqId);
        reject(
          new VesperError(ErrorCode.REQUEST_TIMEOUT, `agent did not answer request ${Object.keys(body)[0]} within ${this.timeoutMs} ms`),
        );
      }, this.timeoutMs);
      this.pending.set(reqId, { resolve, reject, timer });
      send({ ...body, reqId });
    });
  }

  /** The answer to an open request: settles it (true), or false when no request has that id. */
  settle(f: pb.Frame): boolean {
    const p = this.pending.get(f.reqId);
    if (!p) return false;
    this.pending.delete(f.reqId);
    clearTimeout(p.timer);
    p.resolve(f);
    return true;
  }

  /** The link closed: every open request fails with why. */
  failAll(why: string): void {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new VesperError(ErrorCode.DISCONNECTED, `agent link closed: ${why}`));
    }
    this.pending.clear();
  }
}
