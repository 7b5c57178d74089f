// The manager's ingest path in a process of its own, for the SIGKILL benchmark: one GuestLink
// to a host-mode agent, group commit into the framework and the store, acks after commits.
// argv: AGENT_SOCKET STORE_FILE AGENT_DIR. Tells the parent (IPC) once the probe is loaded.
import { join } from 'node:path';
import pino from 'pino';
import { ReadPacer } from '../../host/channel/read-pacer.js';
import { AckCoalescer } from '../../host/daemon/ack-coalescer.js';
import { GuestLink } from '../../host/daemon/guest-link.js';
import { IngestBatcher } from '../../host/daemon/ingest.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import { NotificationFramework } from '../../host/notify/framework.js';
import { EventStore } from '../../host/store/event-store.js';

const [socket, storeFile, agentDir] = process.argv.slice(2) as [string, string, string];
const store = EventStore.open(storeFile, { sync: 'full' });
// a pacer and an ack coalescer of the process's own, as vesperd has
const pacer = new ReadPacer();
const batcher = new IngestBatcher(new NotificationFramework({ store }), undefined, pacer);
const link = new GuestLink('k9', socket, {
  key: loadOrCreateHostKey(join(agentDir, 'keys')),
  batcher,
  heldFor: (vm, run) => store.highestSeq(vm, run),
  hostEvent: (e) => batcher.push([e], () => undefined),
  log: pino({ level: 'warn' }, pino.destination(2)),
  acks: new AckCoalescer(),
  pacer,
});
// Attached before the link exists, as vesperd does with what its store remembers: pushed at the
// first hello unless the agent still has it from the previous (killed) process.
void link.attach({ name: 'signal', params: { signals: 'USR1', include_ignored: 'true', comms: 'sleep' } });
link.session.once('connected', () => process.send?.('ready'));
link.start();
