#!/usr/bin/env bash
# Run the kvstream benchmark on the device machine, once per provider.
# Here, first: bash ../shared/tools/device-prep.sh && pnpm exec nx run @trellis/kvstream:build
# Then hand the device tool this command, carrying .device and the dist/ folders of core,
# backend-efa and kvstream:   bash scripts/device-kvbench.sh [bench args...]
set -euo pipefail
source scripts/device-setup.sh
out=${OUT:-/tmp}
cd packages/kvstream
for p in shm tcp; do
  node dist/bench/run.js --provider "$p" --json "$out/kvbench-$p.json" "$@" | tee "$out/kvbench-$p.txt"
done
