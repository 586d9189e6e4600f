#!/usr/bin/env bash
# Builds what the launch benchmark needs and runs it. Needs a Docker engine.
#   scripts/bench-launch.sh [RUNS] [--bottle-b PATH]
# `--bottle-b PATH` adds another build's `bottle` (its plugins beside it) to
# the same interleaved runs, for an A/B. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
target=${CARGO_TARGET_DIR:-target}
# Only what a `bottle run` of the bench manifest loads, and the bench.
cargo build --release --quiet -p bot-bottle -p bot-bottle-plugin-docker \
  -p bot-bottle-plugin-generic -p bot-bottle-bench-launch
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
uptime
"$target/release/bot-bottle-bench-launch" --runs "$runs" --bottle "$target/release/bottle" \
  --manifest "$dir/bottle.toml" --image bot-bottle-bench/agent "$@"
uptime
