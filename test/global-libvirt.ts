// Tests start libvirtd and virtlogd when they need them (scripts/host-setup.sh); whatever
// this test run started, it stops again at the end. Daemons that were already running
// before the run are left alone.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const script = join(import.meta.dirname, '..', 'scripts', 'host-setup.sh');
let wasRunning = true;

export function setup(): void {
  if (process.getuid?.() !== 0) return;
  wasRunning = spawnSync('bash', [script, 'status'], { stdio: 'ignore', timeout: 30_000 }).status === 0;
}

export function teardown(): void {
  if (process.getuid?.() !== 0 || wasRunning) return;
  spawnSync('bash', [script, 'stop'], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 });
}
