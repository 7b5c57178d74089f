#!/usr/bin/env bash
# npm test: installs what is missing, builds, type-checks, lints (type-checked ESLint and
# Prettier), then runs the unit and acceptance suites. Acceptance tests need root (tracefs, cgroups, /dev/kmsg); without it they skip and
# say why. Ends with one plain summary line: "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
echo "test: typecheck" >&2
node_modules/.bin/tsc -p tsconfig.json --noEmit
echo "test: lint" >&2
node_modules/.bin/eslint .
node_modules/.bin/prettier --check --log-level warn .
mkdir -p .cache
status=0
node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest.json "$@" || status=$?
if [ -f .cache/vitest.json ]; then
  node -e '
    const r = require("./.cache/vitest.json");
    const skipped = r.numPendingTests + (r.numTodoTests || 0);
    console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
  '
fi
exit "$status"
