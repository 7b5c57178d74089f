// Options for the node that runs the agent, before the bundle. The agent's entry
// (guest-agent/main.ts) starts itself again with them when it was started without;
// a launcher that starts the agent directly (host mode: host/channel/local-agent.ts) gives
// them itself. V8 reads them only at start-up: set later (v8.setFlagsFromString) the
// collector aborts the process.
//
// None at present. --single-threaded-gc (V8 collecting on each isolate's own thread) took ~7
// of an idle agent's ~28 wake-ups a second away, but under a record storm in a TCG guest the
// agent fell behind: the manager's SIGKILL test stored 92,512 of 100,000 records in 120 s with
// it and all of them in 28 s without (2026-12-07, one run each). The list stays, so a flag that
// pays for itself has one place to go, and every launcher already passes it on.
export const AGENT_NODE_FLAGS: readonly string[] = [];
