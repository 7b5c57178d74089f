// The frames a host-side AgentClient writes on an in-memory link, decoded as they come.
import type { Readable } from 'node:stream';
import { v1, type pb } from '../../proto/codec.js';
import { FrameDecoder } from '../../proto/frame.js';

/** Calls `onFrame` with every frame written to `fromHost`. */
export function onHostFrames(fromHost: Readable, onFrame: (f: pb.Frame) => void): void {
  const dec = new FrameDecoder({
    maxFrameBytes: 1 << 20,
    onError: () => undefined,
    onFrame: (p) => onFrame(v1.Frame.decode(p)),
  });
  fromHost.on('data', (b: Buffer) => dec.push(b));
}
