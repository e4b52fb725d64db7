#!/usr/bin/env bash
# Run the backend-efa benchmark on the device machine (which has libfabric's runtime but no npm).
# Here, first:  bash ../shared/tools/device-prep.sh && pnpm exec nx run @trellis/backend-efa:build
# Then hand the device tool this command, carrying .device, packages/core/dist, packages/backend-efa/dist:
#   bash scripts/device-bench.sh [bench args...]
set -euo pipefail
source .device/env.sh
cd packages/backend-efa
mkdir -p node_modules/@trellis && ln -sfn ../../../core node_modules/@trellis/core
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
out=${OUT:-/tmp}
node dist/bench/run.js --json "$out/bench.json" "$@" | tee "$out/bench.txt"
