#!/usr/bin/env bash
# Install what Trellis needs on a fresh Debian 12 machine with Node >= 20 (Node 22 is fetched from npm
# where the machine's is older: scripts/node-env.sh), then the workspace dependencies. Safe to run
# again: it only installs what is missing.
#   apt packages: installed when root, otherwise the exact command is printed.
#   pnpm 10:      through npm (corepack's signature check fails offline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages the native backends build and run against; the aarch64 cross compiler, qemu-user
# and file build and check the linux-arm64 prebuilt binaries (scripts/prebuild.sh).
APT_PACKAGES=(g++ make cmake ninja-build pkg-config python3 libfabric1 libfabric-dev libfabric-bin libibverbs1 libibverbs-dev
  etcd-server g++-aarch64-linux-gnu qemu-user file)

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  say "Node.js >= 20 is needed to start (found: $(node --version 2>/dev/null || echo none)); Node 22 is then fetched from npm."
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing Debian packages; run:"
    say "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

want_pnpm=$(node -p 'require("./package.json").packageManager.split("@")[1]')
have_pnpm=$(pnpm --version 2>/dev/null || echo none)
if [ "$have_pnpm" != "$want_pnpm" ]; then
  say "installing pnpm $want_pnpm (found: $have_pnpm)"
  if ! npm install -g "pnpm@$want_pnpm" >/dev/null 2>&1; then
    say "npm could not install pnpm globally; trying corepack"
    COREPACK_INTEGRITY_KEYS=0 corepack enable pnpm
    COREPACK_INTEGRITY_KEYS=0 corepack prepare "pnpm@$want_pnpm" --activate
  fi
fi

# Node 22 or later from here on (scripts/node-env.sh fetches it where the machine has Node 20).
source scripts/node-env.sh

if [ ! -f node_modules/.modules.yaml ] || [ pnpm-lock.yaml -nt node_modules/.modules.yaml ]; then
  say "installing workspace dependencies"
  pnpm install --frozen-lockfile --reporter=append-only >/dev/null
fi
