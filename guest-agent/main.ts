// vesper-agent: the guest side. Run as root inside the guest (or on a host, for host mode).
//
// The blocking tracefs and kernel-log readers live on libuv's thread pool, which must be
// larger than Node's default of 4. Node sizes the pool from UV_THREADPOOL_SIZE before any
// user code runs (its module loader already uses the pool), so when the variable is not
// set the agent starts itself again with it: once, with the same arguments and stdio.
// `vesper-agent relay` (guest-agent/channel/relay.ts) is what an SSH exec channel runs.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { AGENT_NODE_FLAGS } from '../contract/node-flags.js';

const POOL = 64;

if (process.argv[2] === 'enrol') {
  // Shows or resets the pinned host key (docs/trust.md): no pool, no second process.
  const { runEnrol } = await import('./cli.js');
  process.exitCode = runEnrol(process.argv);
} else if (process.argv[2] === 'relay') {
  // The relay only moves bytes: no pool, no second process.
  const { runRelay } = await import('./cli.js');
  process.exitCode = await runRelay(process.argv);
} else if (!process.env.UV_THREADPOOL_SIZE) {
  // This process stays as the agent's parent (the pid whatever started it watches): the OOM
  // killer must not take it either. The child inherits the value and sets its own.
  if (!process.argv.includes('--no-protect'))
    try {
      writeFileSync('/proc/self/oom_score_adj', '-1000');
    } catch {
      /* not root: the agent itself says so */
    }
  // With the agent's node options (../contract/node-flags.ts), which V8 takes at start-up only.
  const flags = AGENT_NODE_FLAGS.filter((f) => !process.execArgv.includes(f));
  const child = spawn(process.execPath, [...process.execArgv, ...flags, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(POOL) },
  });
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig));
  child.on('exit', (code) => process.exit(code ?? 1));
} else {
  const { run } = await import('./cli.js');
  await run(process.argv);
}
