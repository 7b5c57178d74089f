// file sink: NDJSON, one event a line, appended and fsynced before a batch counts as delivered.
// Size-based rotation like logrotate's create mode: when the next batch would take the file
// past max_size, FILE.(keep-1) is dropped, FILE.n becomes FILE.n+1, FILE becomes FILE.1 (a
// rename: a reader that has it open reads on to its end) and a new FILE is created, so that
// `tail -F FILE` follows across rotations and no line is ever split between two files.
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import type { ExportEvent, ExportSink } from './sink.js';

export interface FileParams {
  path: string;
  max_size: number;
  keep: number;
}

export class FileSink implements ExportSink {
  readonly kind = 'file';
  private fh: FileHandle | null = null;
  private size = 0;

  constructor(
    readonly name: string,
    readonly config: FileParams,
  ) {}

  private async ensureOpen(): Promise<FileHandle> {
    if (this.fh) return this.fh;
    const fh = await open(this.config.path, 'a+', 0o640);
    this.size = (await fh.stat()).size;
    if (this.size > 0) {
      // A write cut short (a crash, a full disk) left part of a line: it is ended, so that the
      // next line is whole (the cut one is not valid JSON; its events are sent again).
      const last = Buffer.alloc(1);
      await fh.read(last, 0, 1, this.size - 1);
      if (last[0] !== 0x0a) {
        await fh.write('\n');
        this.size += 1;
      }
    }
    this.fh = fh;
    return fh;
  }

  private async rotate(): Promise<void> {
    await this.fh?.close();
    this.fh = null;
    const p = this.config.path;
    const keep = this.config.keep;
    await rm(`${p}.${keep}`, { force: true });
    for (let n = keep - 1; n >= 1; n--) {
      if (await exists(`${p}.${n}`)) await rename(`${p}.${n}`, `${p}.${n + 1}`);
    }
    await rename(p, `${p}.1`);
  }

  async deliver(batch: readonly ExportEvent[]): Promise<void> {
    let text = '';
    for (const e of batch) text += `${JSON.stringify(e)}\n`;
    const buf = Buffer.from(text);
    let fh = await this.ensureOpen();
    if (this.size > 0 && this.size + buf.length > this.config.max_size) {
      await this.rotate();
      fh = await this.ensureOpen();
    }
    try {
      let at = 0;
      while (at < buf.length) at += (await fh.write(buf, at, buf.length - at)).bytesWritten;
      await fh.datasync();
      this.size += buf.length;
    } catch (err) {
      // The file may end in part of this batch: reopened, the retry appends the whole batch
      // after it (receivers de-duplicate by eventId; a partial last line is not valid JSON).
      await fh.close().catch(() => undefined);
      this.fh = null;
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fh?.close();
    this.fh = null;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
