// Which stored events a failure analysis starts from (`vesper analyze --last` and `--at`): the
// store is searched by (plugin, event) first, then each candidate is checked by its payload.
import { FATAL_SIGNALS } from '../../contract/signals.js';
import type { VesperEvent } from '../notify/event.js';
import { num, obj } from './payload.js';
import { signalOf } from './timeline.js';

/** Is this event one a failure analysis starts from (for --last and --at)? */
export function isFailureLike(e: VesperEvent): boolean {
  switch (`${e.plugin}/${e.event}`) {
    case 'signal/signal': {
      const s = signalOf(e);
      return s !== null && s.result === 0 && FATAL_SIGNALS.has(s.sig);
    }
    case 'process/exit': {
      const x = obj(e.payload['exit']);
      return FATAL_SIGNALS.has(num(x['signal']) ?? 0) && x['thread'] !== true;
    }
    case 'channel/agent-connected':
      // A new agent process that had to be given its probes again: the old one died (or the
      // guest rebooted). A vesperd restart finds the probes still loaded and repushes none.
      return e.payload['agentRestarted'] === true && Array.isArray(e.payload['repushed']) && e.payload['repushed'].length > 0;
    default:
      return FAILURE_KINDS.some((k) => k.plugin === e.plugin && k.event === e.event);
  }
}

/** The (plugin, event) pairs that may be failures; signals and exits are then checked by payload. */
export const FAILURE_KINDS: ReadonlyArray<{ plugin: string; event: string }> = [
  { plugin: 'signal', event: 'signal' },
  { plugin: 'process', event: 'exit' },
  { plugin: 'oom', event: 'oom_kill' },
  { plugin: 'libvirt', event: 'panicked' },
  { plugin: 'libvirt', event: 'crashed' },
  { plugin: 'libvirt', event: 'watchdog' },
  { plugin: 'libvirt', event: 'io-error' },
  { plugin: 'channel', event: 'heartbeat-lost' },
  { plugin: 'channel', event: 'agent-lost' },
  { plugin: 'channel', event: 'agent-connected' },
  { plugin: 'pacemaker', event: 'resource-failed' },
  { plugin: 'pacemaker', event: 'node-lost' },
  { plugin: 'pacemaker', event: 'fencing' },
];
