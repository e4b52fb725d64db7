#!/usr/bin/env bash
# GPU memory registered directly (libfabric 2.x with FI_HMEM) on the device machine: build
# backend-efa against the libfabric 2.x carried in .device (see scripts/libfabric.sh and
# ../shared/tools/device-prep.sh with TRELLIS_LIBFABRIC_DIR), build @trellis/cuda, then run the
# visibility proof. Here, first:
#   TRELLIS_LIBFABRIC_DIR=$(bash scripts/libfabric.sh) bash ../shared/tools/device-prep.sh
#   pnpm exec nx run-many -t build
# then hand the device tool:  bash scripts/device-direct.sh [rounds] [sizes] [variants]
# carrying .device and the dist/ folders of core, backend-efa and cuda.
set -euo pipefail
source scripts/device-setup.sh
[ -n "${TRELLIS_LIBFABRIC_DIR:-}" ] || { echo "no libfabric 2.x in .device: run device-prep.sh with TRELLIS_LIBFABRIC_DIR" >&2; exit 1; }
# libfabric opens the CUDA runtime by its unversioned name.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcudart.so" ] && export LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH && break
done
(
  cd packages/cuda
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null
)
"$TRELLIS_LIBFABRIC_DIR/bin/fi_info" --version | head -1
"$TRELLIS_LIBFABRIC_DIR/bin/fi_info" -p shm -c FI_HMEM 2>&1 | grep -E "provider|caps" | head -2 || true
cd packages/cuda
# TRELLIS_ONLY=visibility or =bench runs one of the two.
only=${TRELLIS_ONLY:-}
rc=0
if [ -z "$only" ] || [ "$only" = visibility ]; then node test/gpu/visibility.mjs "$@" || rc=1; fi
if [ -z "$only" ] || [ "$only" = bench ]; then
  node test/gpu/write-bench.mjs ${TRELLIS_BENCH_SIZES:-} ${TRELLIS_BENCH_MODES:-} || rc=1
fi
exit $rc
