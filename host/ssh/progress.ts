// How `vesper agent install` shows its upload: a bar on a terminal (cli-progress), plain lines
// otherwise (a log file, CI), so that a 100 MB push of node is never a silent minute. Both
// write to stderr only: stdout carries the result.
import cliProgress from 'cli-progress';
import type { PushProgress } from './sftp-push.js';

export interface ProgressView {
  onProgress: (p: PushProgress) => void;
  log: (msg: string) => void;
  /** ends the bar (call in finally) */
  stop: () => void;
}

const mb = (n: number): string => (n / 1e6).toFixed(1);
const base = (path: string): string => path.slice(path.lastIndexOf('/') + 1);

export function progressView(stream: NodeJS.WriteStream = process.stderr, prefix = 'vesper'): ProgressView {
  if (stream.isTTY) {
    const multi = new cliProgress.MultiBar(
      {
        stream,
        format: '  pushing {file} [{bar}] {percentage}% {done}/{size} MB  {eta_formatted}',
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: false,
        barsize: 30,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    let bar: cliProgress.SingleBar | null = null;
    let active = false;
    return {
      onProgress: (p) => {
        if (!bar) {
          bar = multi.create(p.totalBytes, 0, { file: '', done: '0.0', size: mb(p.totalBytes) });
          active = true;
        }
        if (!active) return;
        bar.update(p.bytes, { file: base(p.file).padEnd(22).slice(0, 22), done: mb(p.bytes), size: mb(p.totalBytes) });
        if (p.bytes >= p.totalBytes) {
          // all pushed: the bar stays on screen, finished, and logs go on below it
          multi.stop();
          active = false;
        }
      },
      log: (m) => (active ? multi.log(`${prefix}: ${m}\n`) : void stream.write(`${prefix}: ${m}\n`)),
      stop: () => {
        if (active) multi.stop();
        active = false;
      },
    };
  }
  // Not a terminal: a line per tenth of the whole.
  let lastTenth = -1;
  return {
    onProgress: (p) => {
      const tenth = p.totalBytes ? Math.floor((p.bytes / p.totalBytes) * 10) : 10;
      if (tenth === lastTenth) return;
      lastTenth = tenth;
      stream.write(
        `${prefix}: pushing ${base(p.file)}: ${mb(p.bytes)}/${mb(p.totalBytes)} MB (${p.totalBytes ? Math.floor((p.bytes / p.totalBytes) * 100) : 100}%)\n`,
      );
    },
    log: (m) => void stream.write(`${prefix}: ${m}\n`),
    stop: () => {},
  };
}
