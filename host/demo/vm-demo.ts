// The main job, end to end on the embedded default: a local libvirtd, a small guest built
// here, the agent inside it reached over virtio-serial, probes pushed from the host, real
// failures caused inside the guest, and what the host was told, with libvirt's own events.
import Table from 'cli-table3';
import type { AgentRecord } from '../channel/agent-client.js';
import { GuestSession } from '../channel/guest-session.js';
import type { LibvirtEvent } from '../libvirt/events.js';
import { VmRig } from '../vm/rig.js';
import { describeRecord } from './describe.js';

const log = (msg: string): void => void process.stderr.write(`vesper demo: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    log('needs root: it installs packages and runs libvirtd and QEMU');
    process.exitCode = 77;
    return;
  }
  const rig = new VmRig({ name: 'vesper-demo', testHelpers: true, onProgress: (s, d) => log(`${s}${d ? `: ${d}` : ''}`) });
  const rows: Array<[string, string, string]> = [];
  const seen = new Map<number, number>();
  let session: GuestSession | undefined;
  try {
    await rig.prepare();
    rig.events.on('event', (e: LibvirtEvent) => {
      if (e.domain === rig.name && e.kind !== 'other')
        rows.push([new Date().toISOString().slice(11, 23), 'libvirt', `${e.kind}: ${e.event ?? e.detail ?? ''} ${e.reason ?? ''}`.trim()]);
    });
    (await rig.boot()).close();
    log(`guest ${rig.name} is up under ${rig.accel.toUpperCase()}`);
    session = new GuestSession({ socket: rig.agentSocket, module: (n) => rig.module(n) });
    session.on('record', (r: AgentRecord) => {
      seen.set(r.seq, Date.now());
      rows.push([new Date().toISOString().slice(11, 23), `${r.probe}/${r.event}`, describeRecord(r)]);
    });
    session.start();
    const c = await session.waitConnected(60_000);
    log(`agent ${c.hello.agentVersion} in kernel ${c.hello.kernelRelease}; attaching signal, process, oom`);
    await session.attach({ name: 'signal' });
    await session.attach({ name: 'process', params: { comms: 'vesper-demo-svc,vesper-exit,tail' } });
    await session.attach({ name: 'oom' });
    for (const [what, cmd] of [
      ['the demo service really segfaults', 'segv'],
      ['an administrator SIGTERMs it', 'term'],
      ['a program exits with status 3', 'exit 3'],
      ['a memory hog meets the OOM killer in a 32 MiB cgroup', 'oom'],
      ['the guest kernel panics', 'panic'],
    ] as const) {
      log(`fault: ${what}`);
      await rig.fault(cmd).catch((e: Error) => log(`  ${e.message}`));
      await sleep(cmd === 'panic' ? 3000 : 1600);
    }
    const t = new Table({ head: ['host time', 'source', 'what happened'] });
    for (const r of rows) t.push(r);
    console.log(t.toString());
  } finally {
    session?.stop();
    await rig.stop();
    log('guest stopped and undefined');
  }
}

await main();
