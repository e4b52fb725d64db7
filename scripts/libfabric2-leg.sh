#!/usr/bin/env bash
# The libfabric 2.x leg of `scripts/run test`: build libfabric 2.x from the vendored source (cached,
# see scripts/libfabric.sh) and run backend-efa's whole test suite on it, on Node 24, with the same
# addon the 1.17 run used: the addon opens libfabric at run time, and TRELLIS_LIBFABRIC_DIR points it
# at the 2.x install (its report: test-results-libfabric2-node24.json, counted by the summary).
# Where no 2.x source exists (a machine without ../shared), it says so and passes: the README's
# commands use what apt gives.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '\033[1mlibfabric 2.x leg:\033[0m %s\n' "$*" >&2; }
rm -f packages/backend-efa/test-results-libfabric2*.json
set +e
prefix=$(bash scripts/libfabric.sh)
rc=$?
set -e
if [ $rc -eq 3 ]; then
  say "not run: no libfabric 2.x source (../shared/vendor) on this machine"
  exit 0
elif [ $rc -ne 0 ]; then
  say "building libfabric 2.x failed"
  exit 1
fi
version=$("$prefix/bin/fi_info" --version | sed -n 's/^libfabric api: //p')
cd packages/backend-efa
# On Node 24 (scripts/node.sh): the addon is built once for the machine's Node, and N-API lets the
# same binary serve every line.
node24=$(bash ../../scripts/node.sh 24)
say "running backend-efa's tests on libfabric $version ($prefix), on Node $("$node24" --version)"
# Every conformance group but tcp with 4 NICs (see test/conformance.test.ts: the 1.17 run has it).
PATH="$(dirname "$node24"):$PATH" TRELLIS_LIBFABRIC_DIR="$prefix" \
  TRELLIS_EXPECT_LIBFABRIC="$version" TRELLIS_TEST_REPORT=test-results-libfabric2-node24.json \
  TRELLIS_CONFORMANCE_GROUPS=shm:1,shm:2,shm:4,tcp:1,tcp:2 pnpm exec vitest run
