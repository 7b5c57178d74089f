// SSH benchmarks against a real OpenSSH sshd on a loopback port (test/helpers/sshd.ts):
//   ssh.install_s                 a fresh installAgent into an empty prefix, from the SSH
//                                 connect until the installed agent answered
//   ssh.sigsegv_to_host_ms.*      a real SIGSEGV (tiny ELF storing to address 0) to its record
//                                 decoded by the host over the SSH exec channel (the relay)
//   ssh.hostmode_sigsegv_to_host_ms.*  the same, from the same agent daemon, over its unix
//                                 socket: the host-mode figure, measured in the same run (in
//                                 blocks of 25 trials alternating with the SSH ones)
//   ssh.added_ms.p50              what SSH adds at the median
//   ssh.loadavg_1m                the machine's load at the end of the trials (it is shared)
// Latency as agent.sigsegv_to_host_ms (run.ts): the record's monoNs (the kernel event, on this
// machine's CLOCK_MONOTONIC) against the host's monotonic clock when the record is decoded.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';
import { loadOrCreateHostKey, type HostKey } from '../../host/keys.js';
import { readProbeBundle, signModule } from '../../host/probes/package.js';
import { DEFAULT_AGENT_LAYOUT, openAgentLink, type AgentLayout } from '../../host/ssh/agent-link.js';
import { SshConnection } from '../../host/ssh/connect.js';
import { installAgent } from '../../host/ssh/install.js';
import { uninstallAgent } from '../../host/ssh/uninstall.js';
import { agentPid, stopAgent } from '../helpers/ssh-agent.js';
import { Sshd, whyNoSshd } from '../helpers/sshd.js';
import { waitFor } from '../helpers/wait.js';
import { mono, pct, round, type Metrics } from './stats.js';

/** Trials not counted at the start of each link (JIT, first page faults in the relay). */
const WARMUP = 3;

/** SIGSEGV-to-record latencies (ms) on one link, the signal probe already loaded. */
async function segvTrials(c: AgentClient, prog: string, trials: number): Promise<number[]> {
  const lat: number[] = [];
  for (let i = 0; i < trials + WARMUP; i++) {
    let seen: number | undefined;
    let pid = -1;
    const on = (r: AgentRecord): void => {
      if (r.kind === 'signal' && r.raw.signal?.target?.pid === pid) seen = mono() - r.monoNs;
    };
    c.on('record', on);
    const child = spawn(prog, { stdio: 'ignore' });
    pid = child.pid!;
    await waitFor('SIGSEGV record', () => seen !== undefined, 5000, 0.2);
    c.off('record', on);
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));
    if (i >= WARMUP) lat.push(seen! / 1e6);
  }
  return lat;
}

function report(m: Metrics, prefix: string, lat: number[]): void {
  m[`${prefix}.p50`] = round(pct(lat, 50), 3);
  m[`${prefix}.p99`] = round(pct(lat, 99), 3);
  m[`${prefix}.max`] = round(Math.max(...lat), 3);
}

export async function sshBench(m: Metrics, o: { trials: number; log: (s: string) => void }): Promise<void> {
  const why = whyNoSshd();
  if (why) {
    o.log(`ssh benchmarks skipped: ${why}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vesper-bench-ssh-'));
  const layout: AgentLayout = {
    ...DEFAULT_AGENT_LAYOUT,
    prefix: join(dir, 'opt', 'vesper-agent'),
    runDir: join(dir, 'run', 'vesper-agent'),
  };
  const key: HostKey = loadOrCreateHostKey(join(dir, 'keys'));
  const prog = writeProgram(join(dir, 'segv'), segfaultProgram());
  const sshd = await Sshd.start();
  let conn: SshConnection | null = null;
  const clients: AgentClient[] = [];
  try {
    // A fresh install, as `vesper agent install` does it: connect, push, start, hear the agent.
    const t0 = mono();
    conn = await SshConnection.connect({ target: sshd.target(), keyFile: sshd.clientKey, knownHosts: sshd.knownHosts });
    const r = await installAgent(conn, { layout, hostPublicPem: key.publicPem });
    m['ssh.install_s'] = round((mono() - t0) / 1e9, 3);
    o.log(`ssh: installed in ${m['ssh.install_s']} s (${r.bytesPushed} bytes, agent ${r.agent.pid}, started by ${r.startedBy})`);

    // The same agent daemon over its unix socket (host mode) and over SSH, in alternating
    // blocks, so that whatever else this machine does at the time weighs on both alike.
    const signal = signModule(readProbeBundle('signal'), key);
    const hostMode: number[] = [];
    const overSsh: number[] = [];
    let held = 0;
    const BLOCK = 25;
    for (let done = 0; done < o.trials; done += BLOCK) {
      const n = Math.min(BLOCK, o.trials - done);
      for (const via of ['unix', 'ssh'] as const) {
        const c =
          via === 'unix'
            ? await AgentClient.connectUnix(join(layout.runDir, 'agent.sock'), { resumeAfterSeq: held })
            : await openAgentLink(conn, { layout, resumeAfterSeq: held });
        clients.push(c);
        if (!(c.hello.loaded ?? []).some((p) => p.name === 'signal')) await c.load(signal, { params: { signals: 'SEGV', comms: 'segv' } });
        (via === 'unix' ? hostMode : overSsh).push(...(await segvTrials(c, prog, n)));
        held = c.lastSeq;
        c.close();
      }
    }
    // This machine is shared: how busy it was says how far the tails are the benchmark's own.
    m['ssh.loadavg_1m'] = round(loadavg()[0]!, 2);
    report(m, 'ssh.sigsegv_to_host_ms', overSsh);
    report(m, 'ssh.hostmode_sigsegv_to_host_ms', hostMode);
    m['ssh.sigsegv_trials'] = overSsh.length;
    m['ssh.added_ms.p50'] = round(pct(overSsh, 50) - pct(hostMode, 50), 3);
    await uninstallAgent(conn, { layout });
  } finally {
    for (const c of clients) c.close();
    conn?.close();
    await sshd.stop();
    if (agentPid(layout.runDir)) await stopAgent(layout.runDir);
    rmSync(dir, { recursive: true, force: true });
  }
}
