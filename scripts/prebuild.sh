#!/usr/bin/env bash
# Build the prebuilt binaries the native packages ship, into packages/<pkg>/prebuilds/linux-<arch>/:
# the addon (and, for backend-efa, the benchmark's raw C programs beside it). npm and pnpm then
# install them with no compiler (see installNativeAddon in @trellis/core/kit).
#   scripts/prebuild.sh [x64|arm64|all|host] [package ...]  (default: all; backend-efa backend-verbs cuda moe)
# `host` is this machine's architecture: what a native package's prepack builds, so any tarball
# packed here carries a prebuilt binary for it (a release builds both: scripts/release.sh).
# x64 builds here; arm64 with Debian's cross compiler (g++-aarch64-linux-gnu), headers only: every
# library the addons use (libfabric, libibverbs, CUDA) is opened at run time. The binaries link the
# C++ runtime in and need glibc >= 2.34 (checked below). GPU code: x64 only, with this machine's nvcc
# (sm_90a + PTX for compute 7.5, so any driver of nvcc's CUDA version or later); the arm64 binaries of
# cuda and moe have none (their GPU calls say so) — build those from source on the GPU host.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
say() { printf '\033[1mprebuild:\033[0m %s\n' "$*" >&2; }
which=${1:-all}
shift || true
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(backend-efa backend-verbs cuda moe)
case "$which" in
  all) arches=(x64 arm64) ;;
  x64 | arm64) arches=("$which") ;;
  host) case "$(uname -m)" in x86_64) arches=(x64) ;; aarch64) arches=(arm64) ;; *) echo "prebuild: no prebuilt binaries for $(uname -m)" >&2; exit 1 ;; esac ;;
  *) echo "usage: scripts/prebuild.sh [x64|arm64|all|host] [package ...]" >&2; exit 2 ;;
esac
host=$(uname -m)
# `host` is what a prepack builds: the tarball then carries this machine's binaries only, so what an
# earlier build for another architecture left in the git-ignored prebuilds/ folders goes first.
if [ "$which" = host ]; then
  for pkg in "${pkgs[@]}"; do
    for d in "packages/$pkg/prebuilds"/linux-*; do
      if [ -e "$d" ] && [ "$d" != "packages/$pkg/prebuilds/linux-${arches[0]}" ]; then
        say "removing $d (not this machine's architecture)"
        rm -rf "$d"
      fi
    done
  done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Headers for a cross build: the cross compiler does not search /usr/include. Node-API and
# node-addon-api (architecture-free) and the libfabric and rdma-core headers of this machine.
cross_include() {
  local inc=$work/include napi addon
  napi=$(cd packages/backend-efa && node -p "require('path').dirname(require.resolve('node-api-headers/include/node_api.h', { paths: [require.resolve('cmake-js')] }))")
  addon=$(cd packages/backend-efa && node -p "require('path').resolve(require('node-addon-api').include_dir)")
  for f in "$napi/node_api.h" "$addon/napi.h" /usr/include/rdma/fabric.h /usr/include/infiniband/verbs.h; do
    [ -f "$f" ] || { say "missing $f (pnpm install; apt install libfabric-dev libibverbs-dev)"; return 1; }
  done
  mkdir -p "$inc"
  cp "$napi"/*.h "$addon"/*.h "$inc/"
  cp -r /usr/include/rdma /usr/include/infiniband "$inc/"
  echo "$inc"
}

for arch in "${arches[@]}"; do
  case "$arch" in
    x64) machine=x86_64 triple=x86_64-linux-gnu elf='x86-64' ;;
    arm64) machine=aarch64 triple=aarch64-linux-gnu elf='ARM aarch64' ;;
  esac
  args=(--CDCMAKE_BUILD_TYPE=Release)
  envs=()
  if [ "$machine" != "$host" ]; then
    command -v "$triple-g++" >/dev/null || { say "no $triple-g++: apt install g++-$triple"; exit 1; }
    inc=$(cross_include)
    mkdir -p "$work/fabric" && ln -sfn "$inc" "$work/fabric/include"
    args+=(--CDCMAKE_SYSTEM_NAME=Linux "--CDCMAKE_SYSTEM_PROCESSOR=$machine" "--CDCMAKE_C_COMPILER=$triple-gcc"
      "--CDCMAKE_CXX_COMPILER=$triple-g++" --CDTRELLIS_NO_CUDA=ON)
    envs=("TRELLIS_DEVICE_INCLUDE=$inc" "TRELLIS_LIBFABRIC_DIR=$work/fabric")
  fi
  for pkg in "${pkgs[@]}"; do
    dir=packages/$pkg
    name=$(node -p "require('./$dir/package.json').trellisAddon.name")
    say "$pkg: linux-$arch"
    rm -rf "$dir/build-prebuild-$arch"
    (cd "$dir" && env "${envs[@]}" pnpm exec cmake-js compile -O "build-prebuild-$arch" "${args[@]}" -l warn >&2)
    out=$dir/prebuilds/linux-$arch
    rm -rf "$out" && mkdir -p "$out"
    cp "$dir/build-prebuild-$arch/Release/$name.node" "$out/"
    if [ "$pkg" = backend-efa ]; then
      cp "$dir/build-prebuild-$arch/Release/"{rma_raw,rma_raw_cuda,host_mapped} "$out/"
    fi
    for f in "$out"/*; do
      file -b "$f" | grep -q "$elf" || { say "$f is not an $elf binary: $(file -b "$f")"; exit 1; }
      glibc=$(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
      case "$glibc" in
        GLIBC_2.3[5-9] | GLIBC_2.[4-9]*) say "$f needs $glibc (more than 2.34)"; exit 1 ;;
      esac
    done
    if [ "$machine" = "$host" ]; then
      node -e "process.dlopen({ exports: {} }, process.argv[1])" "$root/$out/$name.node"
    fi
    rm -rf "$dir/build-prebuild-$arch"
    say "$out: $(cd "$out" && ls | tr '\n' ' ')($(du -sh "$out" | cut -f1))"
  done
done
