// The race: how soon Pacemaker starts recovering a VM whose service failed, (a) alone, with
// ocf:heartbeat:VirtualDomain's 10 s monitor and its monitor script, and (b) with vesper
// telling it (pacemaker-fail) the moment the guest's kernel reports the fault. Real Corosync,
// Pacemaker, libvirtd, guest and vesperd (test/helpers/pacemaker-vm.ts).
//
// Per failure (the demo service's SIGSEGV, its OOM kill, a guest kernel panic) and mode, each
// trial injects the fault and reads Pacemaker's own times from its alerts, which vesper's alert
// agent brings into vesperd: detect = the `resource-failed` alert (Pacemaker recorded the
// failure and starts recovery), recover = the `resource-started` alert after it (the resource
// runs again: VirtualDomain's start returns once the monitor script finds the service up).
//
// Both are timed from the fault as vesperd saw it: the arrival of the guest kernel's record of
// it (the SIGSEGV generated, the OOM kill; a few ms after the fault: vm.sigsegv_to_host_ms) or,
// for a panic, libvirt's crashed event; vesperd records these in both modes (in pacemaker_only
// its filters only notify). Host clock throughout, which is Pacemaker's. The same times from
// the host's fault command are reported too (from_command_s): they add how long the fault took
// to happen after the command (an OOM needs the hog started and the group filled),
// command_to_fault_s. Guest clocks are not used: a TCG guest's wall clock is not trustworthy
// to a few hundred ms.

import { PacemakerVm } from '../helpers/pacemaker-vm.js';
import type { EventLine } from '../helpers/vesperd-process.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { round, type Metrics } from './stats.js';

export const FAILURES = ['sigsegv', 'oom', 'panic'] as const;
type Failure = (typeof FAILURES)[number];
type Mode = 'pacemaker_only' | 'vesper';

const MONITOR_INTERVAL_S = 10;

const FAULT: Record<Failure, string> = { sigsegv: 'segv-svc', oom: 'oom-svc', panic: 'panic-now' };

/** The filter rules that turn each failure into pacemaker-fail: plugin, event. */
const RULES: Record<Failure, Array<[string, string]>> = {
  sigsegv: [['signal', 'signal']],
  oom: [['oom', 'oom_kill']],
  panic: [
    ['libvirt', 'panicked'],
    ['libvirt', 'crashed'],
  ],
};

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))] ?? NaN;
}

/** The guest kernel's record of the fault (or libvirt's, for a panic). */
const FAULT_EVENT: Record<Failure, (e: EventLine) => boolean> = {
  sigsegv: (e) => e.plugin === 'signal' && (e.payload?.['signal'] as { sig?: number; target?: { comm?: string } } | undefined)?.sig === 11,
  oom: (e) => e.plugin === 'oom' && e.event === 'oom_kill',
  panic: (e) => e.plugin === 'libvirt' && (e.event === 'crashed' || e.event === 'panicked'),
};

function pacemakerTimeUs(e: EventLine): number {
  const t = e.payload?.['pacemakerTimeUs'];
  if (typeof t !== 'number') throw new Error(`alert without pacemakerTimeUs: ${JSON.stringify(e.payload)}`);
  return t;
}

export async function raceBench(m: Metrics, o: { trials: number; want: (p: string) => boolean; log: (s: string) => void }): Promise<void> {
  const s = await PacemakerVm.start({ onProgress: o.log, monitorIntervalS: MONITOR_INTERVAL_S });
  try {
    const vm = s.rig.name;
    await s.vesperd.ok(['attach', vm, 'signal', '--param', 'comms=vesper-demo-svc']);
    await s.vesperd.ok(['attach', vm, 'oom']);
    await s.vesperd.ok(['attach', vm, 'heartbeat', '--param', 'interval_ms=500']);
    await s.waitLinked(60_000);
    for (const failure of FAILURES) {
      if (!o.want(`race.${failure}`)) continue;
      const times: Record<Mode, { detect: number[]; recover: number[]; fromCommand: number[]; toFault: number[] }> = {
        pacemaker_only: { detect: [], recover: [], fromCommand: [], toFault: [] },
        vesper: { detect: [], recover: [], fromCommand: [], toFault: [] },
      };
      for (const mode of ['pacemaker_only', 'vesper'] as const) {
        await s.vesperd.ok(['filter', 'clear', '--all']);
        if (mode === 'vesper')
          for (const [plugin, event] of RULES[failure])
            await s.vesperd.ok(['filter', 'set', '--vm', vm, plugin, '*', event, 'action', 'pacemaker-fail']);
        for (let trial = 1; trial <= o.trials; trial++) {
          // A clean start: the failures of earlier trials forgotten, the VM running with its
          // service, vesperd's probes loaded in the guest.
          await s.pcmk.check('node1', 'crm_resource', ['--cleanup', '-r', s.resource]);
          await s.waitRunning(240_000);
          await waitFor('the demo service answers', async () => /^ok svc/.test(await s.rig.fault('svc').catch(() => '')), 120_000, 500);
          await s.waitLinked(120_000);
          // A fault comes at any point of the monitor's cycle, not just after a start (when the
          // next monitor is a full interval away): wait a random part of the interval first.
          await sleep(Math.random() * MONITOR_INTERVAL_S * 1000);
          const from = s.lastId;
          const t0Us = Date.now() * 1000;
          await s.rig.fault(FAULT[failure]);
          const failed = await waitFor(
            'Pacemaker: resource failed',
            () => s.eventsOf('pacemaker', from).find((e) => e.event === 'resource-failed' && e.payload?.['rsc'] === s.resource),
            120_000,
            50,
          );
          const started = await waitFor(
            'Pacemaker: resource started again',
            () => s.eventsOf('pacemaker', failed.id).find((e) => e.event === 'resource-started' && e.payload?.['rsc'] === s.resource),
            300_000,
            100,
          );
          const fault = await waitFor(
            'vesperd has the fault',
            () => s.events.find((e) => e.id > from && e.vm === vm && FAULT_EVENT[failure](e)),
            30_000,
            50,
          );
          const faultUs = fault.hostTimeUs;
          const detect = (pacemakerTimeUs(failed) - faultUs) / 1e6;
          const recover = (pacemakerTimeUs(started) - faultUs) / 1e6;
          const fromCommand = (pacemakerTimeUs(failed) - t0Us) / 1e6;
          const toFault = (faultUs - t0Us) / 1e6;
          times[mode].detect.push(detect);
          times[mode].recover.push(recover);
          times[mode].fromCommand.push(fromCommand);
          times[mode].toFault.push(toFault);
          o.log(
            `race ${failure} ${mode} trial ${trial}/${o.trials}: fault seen ${toFault.toFixed(3)} s after the command; ` +
              `recovery started ${detect.toFixed(3)} s after it (${fromCommand.toFixed(3)} s after the command), running again ${recover.toFixed(3)} s`,
          );
        }
        const k = `race.${failure}.${mode}`;
        m[`${k}.detect_s.p50`] = round(quantile(times[mode].detect, 0.5), 3);
        m[`${k}.detect_s.max`] = round(Math.max(...times[mode].detect), 3);
        m[`${k}.recover_s.p50`] = round(quantile(times[mode].recover, 0.5), 3);
        m[`${k}.recover_s.max`] = round(Math.max(...times[mode].recover), 3);
        m[`${k}.from_command_s.p50`] = round(quantile(times[mode].fromCommand, 0.5), 3);
        m[`${k}.from_command_s.max`] = round(Math.max(...times[mode].fromCommand), 3);
        m[`${k}.command_to_fault_s.p50`] = round(quantile(times[mode].toFault, 0.5), 3);
      }
      m[`race.${failure}.speedup`] = round(quantile(times.pacemaker_only.detect, 0.5) / quantile(times.vesper.detect, 0.5), 1);
    }
    await s.vesperd.ok(['filter', 'clear', '--all']);
  } finally {
    await s.stop();
  }
}
