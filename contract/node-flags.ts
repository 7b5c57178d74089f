// Options for the node that runs the agent, before the bundle. The agent's entry
// (guest-agent/main.ts) starts itself again with them when it was started without;
// a launcher that starts the agent directly (host mode: host/channel/local-agent.ts) gives
// them itself. V8 reads them only at start-up: set later (v8.setFlagsFromString) the
// collector aborts the process.
//
// --single-threaded-gc: V8 collects on the isolate's own thread only (the agent's main
// thread, each worker's thread). With helper threads, every small collection of an idle
// agent woke V8's pool threads too: ~7 of its ~28 wake-ups a second (measured in host
// mode, heartbeat and psi loaded). The agent's heaps are a few MB: the pauses stay short.
export const AGENT_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];
