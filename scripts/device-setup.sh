#!/usr/bin/env bash
# Prepare this checkout on the device machine (libfabric runtime, CUDA, no npm): build
# backend-efa's, backend-verbs' and moe's addons with plain cmake and link the workspace packages into each other's
# node_modules as pnpm would. Sourced by the device-*.sh scripts; needs the dist/ folders carried.
set -euo pipefail
source .device/env.sh
root=$PWD
for pkg in backend-efa backend-verbs kvstream weightsync moe cuda cli; do
  [ -d "packages/$pkg" ] || continue
  mkdir -p "packages/$pkg/node_modules/@trellis"
  for dep in core backend-efa backend-verbs kvstream weightsync moe cuda; do
    [ "$dep" = "$pkg" ] || ln -sfn "$root/packages/$dep" "packages/$pkg/node_modules/@trellis/$dep"
  done
done
# backend-efa's addon, backend-verbs' (its RC model takes GPU memory where the CUDA driver is),
# and moe's (its native proxy, and the kernels behind cudaMoeOps: the device's nvcc builds them).
for pkg in backend-efa backend-verbs moe; do
  (
    cd "packages/$pkg"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
    # The tree arrives with its files' own modification times, which can be older than objects a
    # previous call built on a warm machine from other sources: make would keep those. Build from
    # clean whenever the sources (this package's, its C benchmarks', the engine kit's) differ from the last build's.
    sum=$(find native $(ls -d bench 2>/dev/null) CMakeLists.txt "$root/packages/core/src/kit/native" -type f -print0 | sort -z |
      xargs -0 md5sum | md5sum | cut -d' ' -f1)
    clean=()
    [ "$(cat build/.sources.md5 2>/dev/null)" = "$sum" ] || clean=(--clean-first)
    cmake --build build -j"$(nproc)" "${clean[@]}" >/dev/null
    echo "$sum" > build/.sources.md5
  )
done
