#!/usr/bin/env bash
# Build upstream libfabric 2.x (the generation AWS EFA hosts run) from the vendored release tarball
# in ../shared/vendor, with CUDA (FI_HMEM) where CUDA headers exist, into a cache outside the clone
# keyed by the tarball and this recipe. Prints the install prefix on stdout (nothing else there).
#
#   scripts/libfabric.sh            build if needed, print the prefix; exit 3 when no source exists
#   TRELLIS_CACHE=DIR               cache root (default: ~/.cache/trellis)
#   TRELLIS_VENDOR=DIR              where the tarball lives (default: ../shared/vendor next to the clone)
#
# Never commits third-party source: the tarball is extracted into a temporary folder and removed.
# Our own fixes to it live in scripts/libfabric-patches (each patch says what it fixes and why).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vendor=${TRELLIS_VENDOR:-$root/../shared/vendor}
tarball=$(ls "$vendor"/libfabric-2.*.tar.bz2 2>/dev/null | sort -V | tail -1 || true)
say() { printf '\033[1mlibfabric:\033[0m %s\n' "$*" >&2; }
if [ -z "$tarball" ]; then
  say "no libfabric 2.x source under $vendor: the 2.x leg is skipped"
  exit 3
fi
version=$(basename "$tarball" .tar.bz2)
cuda=/usr/local/cuda
[ -f "$cuda/include/cuda.h" ] || cuda=
# Our fixes to upstream (scripts/libfabric-patches/*.patch, applied in order; each says why).
patches=("$root"/scripts/libfabric-patches/*.patch)
key=$( (sha256sum "$tarball" | cut -c1-16; sha256sum "${BASH_SOURCE[0]}" | cut -c1-16; cat "${patches[@]}" | sha256sum | cut -c1-16; echo "$cuda") | sha256sum | cut -c1-12)
cache=${TRELLIS_CACHE:-$HOME/.cache/trellis}
prefix=$cache/$version-$key
if [ -e "$prefix/lib/libfabric.so" ] && [ -e "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi

# Build dependencies (Debian): the efa and verbs providers need libibverbs and librdmacm headers.
need=()
for p in g++ make libibverbs-dev librdmacm-dev bzip2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    say "missing Debian packages; run: sudo apt-get install -y ${need[*]}"
    exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "building $version into $prefix (${cuda:+with CUDA, }about 10 minutes on 2 cores; cached afterwards)"
tar xjf "$tarball" -C "$work"
cd "$work/$version"
for p in "${patches[@]}"; do
  say "applying $(basename "$p")"
  git apply -p1 "$p"
done
cuda_args=(--without-cuda)
cppflags=
if [ -n "$cuda" ]; then
  cuda_args=(--with-cuda="$cuda" --enable-cuda-dlopen)
  cppflags="-I$cuda/include -I$vendor/nvml-shim"
fi
./configure --prefix="$prefix" "${cuda_args[@]}" \
  --enable-shm --enable-tcp --enable-rxm --enable-efa --enable-verbs \
  --disable-psm3 --disable-usnic --disable-opx --disable-sockets --disable-udp --disable-lpp --disable-cxi \
  >"$work/configure.log" 2>&1 || { tail -40 "$work/configure.log" >&2; exit 1; }
make -j"$(nproc)" CPPFLAGS="$cppflags" >"$work/make.log" 2>&1 || { tail -40 "$work/make.log" >&2; exit 1; }
make install CPPFLAGS="$cppflags" >>"$work/make.log" 2>&1 || { tail -40 "$work/make.log" >&2; exit 1; }
rm -f "$prefix"/lib/*.a "$prefix"/lib/*.la
touch "$prefix/.complete"
say "installed $("$prefix/bin/fi_info" --version 2>/dev/null | head -2 | tr '\n' ' ')"
echo "$prefix"
