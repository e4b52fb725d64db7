#!/usr/bin/env bash
# MoE dispatch + combine on the device machine's GPUs (one rank each): @trellis/moe (NVLink inside the node,
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
# One rank per GPU (EP2, EP4, EP8 on a 2-, 4- or 8-GPU machine): NVLink inside the node, then the
# engine's staged path for every byte, then the native proxy (kernels on mapped host memory, the
# proxy thread posting every write), each next to NCCL in the same invocation.
W=$(nvidia-smi -L | wc -l)
for shape in "--tokens 128" "--tokens 4096"; do
  timeout 240 python3 bench/nccl_a2a.py $shape --ranks "$W" --iters "${ITERS:-100}" || echo "FAILED: nccl $shape"
  timeout 240 node bench/gpu-bench.mjs $shape --ranks "$W" --node-size "$W" --iters "${ITERS:-100}" || echo "FAILED: nvlink $shape"
  timeout 240 node bench/gpu-bench.mjs $shape --ranks "$W" --node-size "$W" --gpu-driven --iters "${ITERS:-100}" || echo "FAILED: gpu-driven $shape"
  timeout 240 node bench/gpu-bench.mjs $shape --ranks "$W" --node-size 1 --iters "${ITERS:-100}" || echo "FAILED: staged $shape"
  timeout 240 node bench/gpu-bench.mjs $shape --ranks "$W" --node-size 1 --proxy --iters "${ITERS:-100}" || echo "FAILED: proxy $shape"
done
