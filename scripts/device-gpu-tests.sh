#!/usr/bin/env bash
# Build @trellis/cuda with the device machine's nvcc and run the GPU tests there (the same scripts
# test/gpu.test.ts runs where a GPU is visible). Here, first:
#   bash ../shared/tools/device-prep.sh && pnpm exec nx run-many -t build
# then hand the device tool this command, carrying .device and the dist/ folders of core,
# backend-efa and cuda:   bash scripts/device-gpu-tests.sh
set -euo pipefail
source scripts/device-setup.sh
(
  cd packages/cuda
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null
)
cd packages/cuda
node -e "import('./dist/index.js').then(m => console.log(JSON.stringify(m.cudaInfo())))"
node test/gpu/ipc.mjs
python3 test/gpu/torch_export.py "$(command -v node)" test/gpu/torch_import.mjs
node test/gpu/watcher.mjs 2000
node test/gpu/quant.mjs
node test/gpu/staged.mjs
TRELLIS_PROVIDER=tcp node test/gpu/staged.mjs
