#!/usr/bin/env bash
# Publish every @trellis package, the way a release goes out:
#   1. versions: `pnpm changeset version` has run and its commit is in (the changesets "fixed"
#      group keeps every @trellis package at one version; this script refuses otherwise);
#   2. build: TypeScript of every package (skip with --skip-build when it is fresh);
#   3. prebuilt binaries: scripts/prebuild.sh for linux-x64 and linux-arm64 (TRELLIS_PREBUILD_ARCHES
#      picks: "x64" alone for a quick local rehearsal) — a package never ships without them;
#   4. publish: `pnpm -r publish` (workspace:* becomes the exact version; versions already on the
#      registry are skipped), lifecycle scripts off: everything was built above.
#   scripts/release.sh [--registry URL] [--tag TAG] [--skip-build] [--no-git-checks]
# `pnpm release` runs it. The release test (packages/repo-tests/test/release.test.ts) runs it
# against a local Verdaccio and installs from there with npm and pnpm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '\033[1mrelease:\033[0m %s\n' "$*" >&2; }
publish_args=(--access public)
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) publish_args+=(--registry "$2"); shift 2 ;;
    --tag) publish_args+=(--tag "$2"); shift 2 ;;
    --skip-build) build=0; shift ;;
    --no-git-checks) publish_args+=(--no-git-checks); shift ;;
    *) echo "usage: scripts/release.sh [--registry URL] [--tag TAG] [--skip-build] [--no-git-checks]" >&2; exit 2 ;;
  esac
done

# 1. One version for all: what the changesets "fixed" group promises, checked before anything is sent.
versions=$(for p in packages/*/package.json; do
  node -e 'const p=require("./"+process.argv[1]); if(!p.private) console.log(p.name+" "+p.version)' "$p"
done)
distinct=$(echo "$versions" | awk '{print $2}' | sort -u)
if [ "$(echo "$distinct" | wc -l)" -ne 1 ]; then
  say "the @trellis packages are not at one version (run pnpm changeset version):"
  echo "$versions" >&2
  exit 1
fi
version=$distinct
say "$(echo "$versions" | wc -l) packages at $version"

# 2. Build.
if [ "$build" = 1 ]; then
  pnpm exec nx run-many -t build --outputStyle=static >&2
fi
for p in packages/*/package.json; do
  dir=$(dirname "$p")
  node -e 'process.exit(require("./"+process.argv[1]).private ? 1 : 0)' "$p" || continue
  [ -f "$dir/dist/index.js" ] || { say "$dir has no dist/: build first"; exit 1; }
done

# 3. Prebuilt binaries, for every architecture asked (default both).
read -r -a arches <<<"${TRELLIS_PREBUILD_ARCHES:-x64 arm64}"
for arch in "${arches[@]}"; do bash scripts/prebuild.sh "$arch"; done
for pkg in backend-efa backend-verbs cuda moe; do
  name=$(node -p "require('./packages/$pkg/package.json').trellisAddon.name")
  for arch in "${arches[@]}"; do
    [ -f "packages/$pkg/prebuilds/linux-$arch/$name.node" ] || { say "packages/$pkg: no prebuilt linux-$arch"; exit 1; }
  done
done

# 4. Publish.
say "publishing ${publish_args[*]}"
npm_config_ignore_scripts=true pnpm -r --filter './packages/*' publish "${publish_args[@]}" >&2
say "published $version"
