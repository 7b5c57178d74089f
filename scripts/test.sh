#!/usr/bin/env bash
# npm test: installs what is missing, builds, then runs the unit and acceptance suites.
# Acceptance tests need root (tracefs, cgroups, /dev/kmsg); without it they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
node_modules/.bin/tsc -p tsconfig.json --noEmit
exec node_modules/.bin/vitest run "$@"
