#!/usr/bin/env bash
# Builds what the launch benchmark needs and runs it. Needs a Docker engine.
#   scripts/bench-launch.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo build --release --quiet
cargo build --release --quiet -p bot-bottle-bench-launch
scripts/image-from-binaries.sh bot-bottle-bench/agent sleep true >/dev/null
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
cat >"$dir/bottle.toml" <<TOML
name = "bench-launch"
backend = "docker"
[agent]
provider = "generic"
image = "bot-bottle-bench/agent"
command = ["true"]
TOML
target/release/bot-bottle-bench-launch --runs "$runs" --bottle target/release/bottle --manifest "$dir/bottle.toml" --image bot-bottle-bench/agent
