#!/usr/bin/env bash
# npm run bench -- [--json FILE] [--only PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
# text-import: host/ssh/remote/ scripts are imported as text (scripts/text-hooks.mjs)
exec node_modules/.bin/tsx --import ./scripts/text-import.mjs test/bench/run.ts "$@"
