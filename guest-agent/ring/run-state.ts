// The agent's run-state file: how a restarted agent knows what its predecessor numbered, so
// that the host can count what died with it. The ring lives in memory; when the agent is
// killed, records it had numbered but the host did not yet hold are gone, and without this
// the host would only see a run that stopped early.
//
// Invariant: no record leaves the agent before the file says its sequence number was
// numbered (persistBeforeSend is called before every batch is sent), so the host can never
// hold a seq above the recorded one, and "recorded last seq − what the host holds" is exactly
// what the host lost of that run. The file is also written once per event-loop turn with new
// records, so records numbered while no host is connected are counted too (all but the last
// turn's, which had not left the agent and count as never read).
//
// Format: fixed-width ASCII lines, the first for this run (rewritten in place with one
// pwrite), then up to MAX_ENDED earlier runs of this boot:
//   vesper-agent-run v1 boot=<boot id> pid=<pid> last=<seq>
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

const LINE = 128;
const MAX_ENDED = 8;

export interface EndedRun {
  bootId: string;
  agentPid: number;
  lastSeq: number;
}

function line(bootId: string, pid: number, last: number): Buffer {
  const b = Buffer.alloc(LINE, ' ');
  b.write(`vesper-agent-run v1 boot=${bootId} pid=${pid} last=${last}`);
  b[LINE - 1] = 0x0a;
  return b;
}

function parse(text: string): EndedRun[] {
  const out: EndedRun[] = [];
  for (const l of text.split('\n')) {
    const m = /^vesper-agent-run v1 boot=(\S*) pid=(\d+) last=(\d+)\s*$/.exec(l);
    if (m) out.push({ bootId: m[1]!, agentPid: Number(m[2]), lastSeq: Number(m[3]) });
  }
  return out;
}

/** An agent process with this pid still runs (a reused pid of some other program does not count). */
export function agentAlive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('vesper-agent');
  } catch {
    return false;
  }
}

export class RunState {
  private fd = -1;
  private written = -1;
  /** earlier runs of this boot, newest first */
  readonly ended: EndedRun[] = [];

  constructor(
    readonly path: string | null,
    private readonly bootId: string,
    private readonly pid = process.pid,
  ) {
    if (!path) return;
    let earlier: EndedRun[] = [];
    if (existsSync(path)) {
      try {
        earlier = parse(readFileSync(path, 'latin1'));
      } catch {
        earlier = [];
      }
    }
    // Another boot's runs are not ours to report (their records went with that boot, and the
    // host knows the boot ended); a run whose process still lives has not ended.
    for (const r of earlier)
      if (r.bootId === bootId && r.agentPid !== pid && !agentAlive(r.agentPid) && this.ended.length < MAX_ENDED) this.ended.push(r);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.fd = openSync(path, 'w', 0o600);
    const all = Buffer.concat([line(bootId, pid, 0), ...this.ended.map((r) => line(r.bootId, r.agentPid, r.lastSeq))]);
    writeSync(this.fd, all, 0, all.length, 0);
    this.written = 0;
  }

  /** Records that the run has numbered up to lastSeq (one pwrite, only when it changed). */
  note(lastSeq: number): void {
    if (this.fd < 0 || lastSeq === this.written) return;
    writeSync(this.fd, line(this.bootId, this.pid, lastSeq), 0, LINE, 0);
    this.written = lastSeq;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
