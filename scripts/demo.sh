#!/usr/bin/env bash
# vesper's main job, end to end, on this machine: installs what is missing, builds the
# agent and probes, runs the agent, causes real failures and prints what the host saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
exec node_modules/.bin/tsx host/demo/host-mode.ts "$@"
