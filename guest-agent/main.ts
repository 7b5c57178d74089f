// vesper-agent: the guest side. Run as root inside the guest (or on a host, for host mode).
//
// The blocking tracefs readers live on libuv's thread pool, so the pool must be larger than
// Node's default of 4 before anything uses it; main.ts sets that and only then loads the rest.
process.env.UV_THREADPOOL_SIZE ??= '64';

const { run } = await import('./cli.js');
await run(process.argv);
