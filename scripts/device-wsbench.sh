#!/usr/bin/env bash
# Run the weightsync benchmark on the device machine: 4→2 and 8→4 processes, shm and tcp.
# Here, first: bash ../shared/tools/device-prep.sh && pnpm exec nx run @trellis/weightsync:build
# Then hand the device tool this command, carrying .device and the dist/ folders of core,
# backend-efa and weightsync:   bash scripts/device-wsbench.sh [bench args...]
set -euo pipefail
source scripts/device-setup.sh
out=${OUT:-/tmp}
cd packages/weightsync
for p in shm tcp; do
  for mk in "4 2" "8 4"; do
    set -- $mk
    node dist/bench/run.js --provider "$p" --trainers "$1" --inference "$2" --json "$out/wsbench-$p-$1x$2.json" | tee "$out/wsbench-$p-$1x$2.txt"
  done
done
node dist/bench/project.js | tee "$out/wsproject.txt"
