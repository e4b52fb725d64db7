#!/usr/bin/env bash
# Host memory between two processes of one host: libfabric shm (rma_raw: the engine's posts, no
# SDK) against a shared mapping and memcpy (host_mapped), same sizes, 4 writes in flight, each
# figure the best of 3. Needs backend-efa built (its build/Release has both programs).
#   bash scripts/host-shm-vs-mapped.sh [sizes=4096,65536,1048576,16777216,67108864]
set -euo pipefail
bin=${TRELLIS_BENCH_BIN:-packages/backend-efa/build/Release}
sizes=${1:-4096,65536,1048576,16777216,67108864}
best() { # best GB/s of 3 runs of "$@" (a JSON line with bytes and seconds)
  for _ in 1 2 3; do "$@"; done | awk -F'[:,}]' '{ for (i = 1; i < NF; i++) { if ($i ~ /"bytes"/) b = $(i + 1); if ($i ~ /"seconds"/) s = $(i + 1) } g = b / s / 1e9; if (g > m) m = g } END { printf "%.2f", m }'
}
printf '%-10s %14s %14s %8s\n' size 'shm (GB/s)' 'mapped (GB/s)' 'shm/map'
for size in ${sizes//,/ }; do
  ops=$(( (1 << 31) / size )); [ "$ops" -gt 20000 ] && ops=20000; [ "$ops" -lt 16 ] && ops=16
  shm=$(best "$bin/rma_raw" shm single "$size" "$ops" 4)
  map=$(best "$bin/host_mapped" "$size" "$ops" 4)
  printf '%-10s %14s %14s %8s\n' "$size" "$shm" "$map" "$(awk -v a="$shm" -v b="$map" 'BEGIN { printf "%.2f", a / b }')"
done
