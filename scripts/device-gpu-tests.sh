#!/usr/bin/env bash
# Build @trellis/cuda with the device machine's nvcc and run the GPU tests there (the same scripts
# test/gpu.test.ts runs where a GPU is visible). Here, first:
#   bash ../shared/tools/device-prep.sh && pnpm exec nx run-many -t build
# then hand the device tool this command, carrying .device and the dist/ folders of core,
# backend-efa, backend-verbs, cuda, kvstream, weightsync and moe:   bash scripts/device-gpu-tests.sh
# Each script exits non-zero when a byte it checks is wrong.
set -euo pipefail
source scripts/device-setup.sh
(
  cd packages/cuda
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null
)
cd packages/cuda
node -e "import('./dist/index.js').then(m => console.log(JSON.stringify(m.cudaInfo())))"
failed=0
# Each check runs to its own limit; a failure or hang is reported and the rest still run.
t() { timeout 180 "$@" || { echo "FAILED (rc=$?): $*" >&2; failed=$((failed + 1)); }; }
t node test/gpu/ipc.mjs
t python3 test/gpu/torch_export.py "$(command -v node)" test/gpu/torch_import.mjs
t node test/gpu/watcher.mjs 2000
t node test/gpu/staged.mjs
t env TRELLIS_PROVIDER=tcp node test/gpu/staged.mjs
# backend-verbs' RC model with GPU memory registered to it (copied with the CUDA driver): an
# immediate only once its bytes are in GPU memory; kvstream's paged writes through it below.
t env TRELLIS_BACKEND=verbs node test/gpu/visibility.mjs 300 65536,16777216 direct,direct-reuse
cd ../weightsync
t node test/gpu/quant.mjs
t node test/gpu/ws.mjs
t env TRELLIS_PROVIDER=tcp node test/gpu/ws.mjs
cd ../kvstream
t node test/gpu/kv.mjs
t env TRELLIS_PROVIDER=tcp node test/gpu/kv.mjs
t env TRELLIS_BACKEND=verbs TRELLIS_GPU_PATH=direct node test/gpu/kv.mjs
cd ../moe
t node test/gpu/moe.mjs
t env TRELLIS_PROVIDER=tcp node test/gpu/moe.mjs
# MoeStream: stream-ordered, device-resident routing, 100 CUDA-graph replays with new routing.
t node test/gpu/stream.mjs
# PyTorch interop: torch routes on the GPU, MoeStream's graphs read its tensors through CUDA IPC,
# the streams of the two processes ordered by interprocess events; torch checks every output.
t python3 examples/torch/moe_gate.py 20
echo "GPU checks failed: $failed"
exit "$failed"
