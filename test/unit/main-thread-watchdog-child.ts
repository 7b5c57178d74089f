// Child of main-thread-watchdog.test.ts: arms the guard, then either spins its main thread
// (argv[3] === 'spin') or stays responsive for a while and exits 0.
import { MainThreadWatchdog } from '../../guest-agent/modules/loop-watchdog.js';

const w = new MainThreadWatchdog(Number(process.argv[2]));
process.stdout.write('armed\n');
if (process.argv[3] === 'spin') {
  setTimeout(() => {
    for (;;) {
      /* the agent's own thread, stuck */
    }
  }, 200);
} else {
  setTimeout(() => void w.stop().then(() => process.exit(0)), 2000);
}
