#!/usr/bin/env bash
# MoE dispatch + combine on the device machine's two GPUs: @trellis/moe (NVLink inside the node,
# and the engine's staged path) next to torch.distributed NCCL all_to_all_single, same shapes, same
# invocation. Here first: bash ../shared/tools/device-prep.sh && pnpm exec nx run-many -t build;
# then hand the device tool `bash scripts/device-moebench.sh`, carrying .device and the dist/
# folders of core, backend-efa, cuda and moe.
set -euo pipefail
source scripts/device-setup.sh
(
  cd packages/cuda
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null 2>&1
)
cd packages/moe
nvidia-smi --query-gpu=index,name --format=csv,noheader
for shape in "--tokens 128" "--tokens 4096"; do
  timeout 240 python3 bench/nccl_a2a.py $shape --iters "${ITERS:-100}"
  timeout 240 node bench/gpu-bench.mjs $shape --node-size 2 --iters "${ITERS:-100}"
  timeout 240 node bench/gpu-bench.mjs $shape --node-size 1 --iters "${ITERS:-100}"
done
