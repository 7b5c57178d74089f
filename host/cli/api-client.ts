// The CLI's end of vesperd's API socket: one request, its reply (or a stream of replies).
import { connect } from 'node:net';
import { ApiLink, type apipb } from '../../proto/api-codec.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';

export const DEFAULT_SOCKET = '/run/vesper/vesperd.sock';

export class ApiClient {
  private nextId = 1;
  private readonly waiting = new Map<number, (r: apipb.IReply) => void>();

  private constructor(private readonly link: ApiLink) {
    link.on('frame', (f) => {
      if (f.reply) this.waiting.get(f.id)?.(f.reply);
    });
    link.on('close', () => {
      const gone = new VesperError(ErrorCode.DISCONNECTED, 'vesperd closed the connection');
      for (const cb of this.waiting.values()) cb({ done: true, error: gone.toWire() });
      this.waiting.clear();
    });
  }

  static connect(socket = DEFAULT_SOCKET, timeoutMs = 5000): Promise<ApiClient> {
    return new Promise((resolve, reject) => {
      const s = connect(socket);
      const t = setTimeout(() => {
        s.destroy();
        reject(new VesperError(ErrorCode.DAEMON_UNREACHABLE, `vesperd did not answer on ${socket} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new ApiClient(new ApiLink(s)));
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(t);
        if (err.code === 'EACCES' || err.code === 'EPERM')
          reject(
            new VesperError(ErrorCode.PERMISSION_DENIED, `not allowed to talk to vesperd at ${socket}: root or the vesper group only`),
          );
        else if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')
          reject(
            new VesperError(
              ErrorCode.DAEMON_UNREACHABLE,
              `vesperd is not running (nothing listens on ${socket}); start it with: vesper daemon`,
            ),
          );
        else reject(new VesperError(ErrorCode.DAEMON_UNREACHABLE, `cannot reach vesperd at ${socket}: ${err.message}`));
      });
    });
  }

  /** One request, one reply; a reply with an error rejects with it. */
  request(body: apipb.IRequest): Promise<apipb.IReply> {
    return new Promise((resolve, reject) => {
      this.stream(body, (r) => {
        if (!r.done) return;
        if (r.error) reject(VesperError.fromWire(r.error));
        else resolve(r);
      });
    });
  }

  /** A request whose replies come as a stream; returns its id (for cancel). */
  stream(body: apipb.IRequest, onReply: (r: apipb.IReply) => void): number {
    const id = this.nextId++;
    this.waiting.set(id, (r) => {
      if (r.done) this.waiting.delete(id);
      onReply(r);
    });
    this.link.send({ id, request: body });
    return id;
  }

  close(): void {
    this.link.close();
  }
}
