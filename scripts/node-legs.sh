#!/usr/bin/env bash
# The Node 22 leg of `scripts/run test`: core's and rendezvous' suites on Node 22 (from
# scripts/node.sh), with the addon built for the machine's Node (N-API: one binary serves every
# line). Reports: packages/*/test-results-node22.json, counted by the summary. backend-efa's whole
# suite runs on Node 24 in scripts/libfabric2-leg.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '\033[1mNode 22 leg:\033[0m %s\n' "$*" >&2; }
node22=$(bash scripts/node.sh 22)
say "$("$node22" --version): core, rendezvous"
status=0
for pkg in core rendezvous; do
  rm -f "packages/$pkg/test-results-node22.json"
  (cd "packages/$pkg" && PATH="$(dirname "$node22"):$PATH" TRELLIS_TEST_REPORT=test-results-node22.json \
    pnpm exec vitest run) || status=1
done
exit $status
