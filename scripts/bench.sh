#!/usr/bin/env bash
# npm run bench -- [--json FILE] [--only PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
exec node_modules/.bin/tsx test/bench/run.ts "$@"
