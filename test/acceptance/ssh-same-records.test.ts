// The same fault through both transports gives the same records. A real guest under libvirt
// reached over its virtio-serial channel, and this machine reached over SSH (a real sshd on a
// loopback port, the agent put there by installAgent): the same tiny ELF at the same path
// (/usr/sbin/vesper-segv, which the guest image has; here in a private mount namespace, so
// this machine's /usr/sbin is untouched) stores to address 0, with the signal and process
// probes attached with the same parameters on both sides. The records are compared field by
// field; only what must differ between two machines and two runs is left out: pids (checked to
// be the faulting process's own on each side), times, sequence numbers and probe handles.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../proto/record.js';
import { GuestSession } from '../../host/channel/guest-session.js';
import { segfaultProgram, writeProgram } from '../rigs/demo/tiny-elf.js';
import { SEGV_PROGRAM } from '../rigs/image/guest-scripts.js';
import { VmRig } from '../rigs/vm/rig.js';
import { DEFAULT_AGENT_LAYOUT, type AgentLayout } from '../../host/ssh/agent-link.js';
import { SshConnection } from '../../host/ssh/connect.js';
import { installAgent } from '../../host/ssh/install.js';
import { SshDialer } from '../../host/ssh/ssh-dialer.js';
import { plainOf } from '../../host/notify/record-event.js';
import { numbersIn } from '../helpers/fault-answer.js';
import { whyNoKernelAccess } from '../helpers/root.js';
import { stopAgent } from '../helpers/ssh-agent.js';
import { Sshd, whyNoSshd } from '../helpers/sshd.js';
import { sleep, waitFor } from '../helpers/wait.js';

const why =
  process.getuid?.() !== 0
    ? 'needs root (libvirtd, QEMU, sshd)'
    : process.arch !== 'x64'
      ? 'needs an x86-64 host'
      : whyNoKernelAccess() || whyNoSshd();
if (why) console.warn(`SKIP ssh same-records test: ${why}`);

const COMM = 'vesper-segv';
const PROBES: Array<{ name: string; params: Record<string, string> }> = [
  { name: 'signal', params: { signals: 'SEGV', comms: COMM } },
  { name: 'process', params: { comms: COMM } },
];

/** A record as plain data with what must differ between two machines taken out. */
function comparable(r: AgentRecord, pid: number): Record<string, unknown> {
  // Every field, defaults included (plainOf); the header's seq, times and handle left out.
  const o = { probe: r.probe, event: r.event, eventId: r.raw.eventId, [r.raw.payload ?? 'none']: plainOf(r.raw[r.raw.payload!]) };
  const walk = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(walk);
    if (v === null || typeof v !== 'object') return v;
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => [
        k,
        // a pid must be the faulting process's own on each side; its number differs
        (k === 'pid' || k === 'oldPid') && typeof x === 'number'
          ? x === pid
            ? 'the faulting pid'
            : x
          : // the exec's parent is whatever ran the program on each machine (checked on its own)
            k === 'parent' && x && typeof x === 'object'
            ? 'its parent'
            : walk(x),
      ]),
    );
  };
  return walk(o) as Record<string, unknown>;
}

/** The records about `pid`'s fault, in a stable order (the kinds' order may vary). */
function aboutPid(rs: AgentRecord[], pid: number): AgentRecord[] {
  const task = (r: AgentRecord): number | undefined =>
    r.raw.signal?.target?.pid ?? r.raw.exit?.task?.pid ?? r.raw.exec?.task?.pid ?? r.raw.fork?.child?.pid ?? undefined;
  return rs.filter((r) => task(r) === pid).sort((a, b) => a.kind.localeCompare(b.kind) || a.seq - b.seq);
}

describe.skipIf(Boolean(why))('the same fault over virtio-serial and over SSH', () => {
  let rig: VmRig;
  let sshd: Sshd;
  let dir: string;
  let layout: AgentLayout;
  let dialer: SshDialer | null = null;
  const sessions: GuestSession[] = [];
  const viaVirtio: AgentRecord[] = [];
  const viaSsh: AgentRecord[] = [];

  beforeAll(async () => {
    rig = new VmRig({ testHelpers: true, onProgress: (s, d) => console.warn(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    await rig.prepare();
    (await rig.boot()).close();
    dir = mkdtempSync('/tmp/vesper-same-records-');
    layout = { ...DEFAULT_AGENT_LAYOUT, prefix: join(dir, 'opt'), runDir: join(dir, 'run') };
    sshd = await Sshd.start();
    const ssh = { target: sshd.target(), keyFile: sshd.clientKey, knownHosts: sshd.knownHosts };
    const conn = await SshConnection.connect(ssh);
    try {
      await installAgent(conn, { layout, hostPublicPem: rig.key.publicPem });
    } finally {
      conn.close();
    }
    const virtio = new GuestSession({ socket: rig.agentSocket, module: (n) => rig.module(n), maxBackoffMs: 1000 });
    dialer = new SshDialer({ ssh, layout });
    const overSsh = new GuestSession({ open: dialer.open, module: (n) => rig.module(n), maxBackoffMs: 1000 });
    virtio.on('record', (r) => viaVirtio.push(r));
    overSsh.on('record', (r) => viaSsh.push(r));
    for (const [via, s] of [
      ['virtio-serial', virtio],
      ['ssh', overSsh],
    ] as const) {
      sessions.push(s);
      let why = '';
      s.on('linkFailed', (e) => (why = `${e.code}: ${e.message}`));
      s.start();
      await s.waitConnected(60_000).catch((e: Error) => {
        throw new Error(`${via}: ${e.message} (last attempt: ${why || 'none failed'})`);
      });
      for (const p of PROBES) await s.attach(p);
    }
  }, 600_000);

  afterAll(async () => {
    for (const s of sessions) s.stop();
    dialer?.close();
    await sshd?.stop();
    if (layout) await stopAgent(layout.runDir);
    if (dir) rmSync(dir, { recursive: true, force: true });
    await rig?.stop();
  }, 120_000);

  it('a tiny ELF storing to address 0: the same signal, exec and exit records, field by field', async () => {
    // In the guest: its fault helper runs /usr/sbin/vesper-segv.
    const [guestPid] = numbersIn(await rig.fault('crash'));
    // Here: the same program at the same path, in a mount namespace of its own.
    const prog = writeProgram(join(dir, COMM), segfaultProgram());
    const child = spawn(
      'unshare',
      ['--mount', 'sh', '-c', `mount -t tmpfs vesper /usr/sbin && cp ${prog} ${SEGV_PROGRAM} && exec ${SEGV_PROGRAM}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const hostPid = child.pid!;
    const end = await new Promise<string | null>((r) => child.once('exit', (_code, sig) => r(sig)));
    expect(end, stderr).toBe('SIGSEGV');

    // signal, exec and exit on each side
    const complete = (rs: AgentRecord[], pid: number) => () => {
      const kinds = new Set(aboutPid(rs, pid).map((r) => r.kind));
      return kinds.has('signal') && kinds.has('exec') && kinds.has('exit');
    };
    await waitFor('the guest fault over virtio-serial', complete(viaVirtio, guestPid!), 30_000);
    await waitFor('the host fault over SSH', complete(viaSsh, hostPid), 15_000);
    await sleep(1000); // anything else about these processes would be here by now
    const guest = aboutPid(viaVirtio, guestPid!);
    const host = aboutPid(viaSsh, hostPid);
    expect(host.map((r) => [r.kind, r.probe, r.event])).toEqual(guest.map((r) => [r.kind, r.probe, r.event]));
    expect(host.map((r) => r.kind)).toEqual(expect.arrayContaining(['exec', 'exit', 'signal']));
    if (process.env['VESPER_TEST_VERBOSE'])
      console.warn(
        JSON.stringify({ guest: guest.map((r) => comparable(r, guestPid!)), host: host.map((r) => comparable(r, hostPid)) }, null, 1),
      );
    for (let i = 0; i < guest.length; i++) expect(comparable(host[i]!, hostPid)).toEqual(comparable(guest[i]!, guestPid!));
    // What was compared is what matters: a kernel-raised SIGSEGV of vesper-segv, and its exit by it.
    const sig = host.find((r) => r.kind === 'signal')!.raw.signal!;
    expect(sig).toMatchObject({ sig: 11, code: 1, senderIsKernel: true, target: { comm: COMM } });
    expect(host.find((r) => r.kind === 'exit')!.raw.exit).toMatchObject({ signal: 11, filename: SEGV_PROGRAM });
    // The exec's parent on each side is what ran the program: the guest's fault helper, and
    // here this test's own process (unshare became the shell, which became the program).
    const parentOf = (rs: AgentRecord[]) => rs.find((r) => r.kind === 'exec')!.raw.exec!.parent;
    expect(parentOf(guest)).toMatchObject({ comm: 'vesper-fault' });
    expect(parentOf(host)).toMatchObject({ pid: process.pid });
    // The values that must differ do: two kernels, two machines.
    expect(sessions[0]!.client!.hello.bootId).not.toBe(sessions[1]!.client!.hello.bootId);
  }, 120_000);
});
