#!/usr/bin/env bash
# Run the backend-efa benchmark on the device machine (which has libfabric's runtime but no npm).
# Here, first:  bash ../shared/tools/device-prep.sh && pnpm exec nx run @trellis/backend-efa:build
# Then hand the device tool this command, carrying .device, packages/core/dist, packages/backend-efa/dist:
#   bash scripts/device-bench.sh [bench args...]
set -euo pipefail
source scripts/device-setup.sh
out=${OUT:-/tmp}
cd packages/backend-efa
node dist/bench/run.js --json "$out/bench.json" "$@" | tee "$out/bench.txt"
