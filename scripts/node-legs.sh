#!/usr/bin/env bash
# The Node 24 leg of `scripts/run test` (which runs everything on Node 22): core's, rendezvous',
# kvstream's and cli's suites again on Node 24 (from scripts/node.sh), with the addons the workspace
# built (N-API: one binary serves every line). Reports: packages/*/test-results-node24.json, counted
# by the summary. backend-efa's whole suite runs on Node 24 in scripts/libfabric2-leg.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '\033[1mNode 24 leg:\033[0m %s\n' "$*" >&2; }
node24=$(bash scripts/node.sh 24)
say "$("$node24" --version): core, rendezvous, kvstream, cli"
status=0
for pkg in core rendezvous kvstream cli; do
  rm -f "packages/$pkg/test-results-node24.json" "packages/$pkg/test-results-node22.json"
  (cd "packages/$pkg" && PATH="$(dirname "$node24"):$PATH" TRELLIS_TEST_REPORT=test-results-node24.json \
    pnpm exec vitest run) || status=1
done
exit $status
