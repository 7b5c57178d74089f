#!/usr/bin/env bash
# vesper's main job, end to end on the embedded default: installs what is missing (Debian
# packages, npm packages, the guest image), starts a local libvirtd, boots a small guest
# with the agent inside, attaches probes from the host, causes real failures in the guest
# and prints what the host was told. `--host-mode` runs the agent on this machine instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
if [ "${1:-}" = "--host-mode" ]; then
  shift
  exec node_modules/.bin/tsx test/rigs/demo/host-mode.ts "$@"
fi
exec node_modules/.bin/tsx test/rigs/demo/vm-demo.ts "$@"
