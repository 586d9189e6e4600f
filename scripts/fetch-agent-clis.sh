#!/usr/bin/env bash
# Fetches the native Codex and Claude Code CLIs from the npm registry (the
# platform packages, no npm needed), checks each tarball against the
# registry's shasum, and extracts the binaries into DIR. Cached: a second
# run with the same versions downloads nothing.
#
#   scripts/fetch-agent-clis.sh DIR      -> DIR/codex, DIR/claude
#
# See docs/research/agent-clis.md for the package layout.
set -euo pipefail
shopt -s inherit_errexit  # a failed download inside $(fetch …) must stop the script
dir=${1:?usage: $0 DIR}
codex_version=${CODEX_VERSION:-0.169.0}
claude_version=${CLAUDE_VERSION:-2.1.330}
registry=${NPM_REGISTRY:-https://registry.npmjs.org}
mkdir -p "$dir"

# fetch NAME VERSION -> path of the verified tarball
fetch() {
  local name=$1 version=$2 file="$dir/$(echo "$1" | tr '/@' '__')-$2.tgz"
  local meta shasum url
  if [ ! -s "$file.ok" ] || [ ! -s "$file" ]; then
    meta=$(curl -fsSL "$registry/${name/\//%2f}/$version")
    shasum=$(printf '%s' "$meta" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["shasum"])')
    url=$(printf '%s' "$meta" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["tarball"])')
    curl -fsSL -o "$file" "$url"
    echo "$shasum  $file" | sha1sum -c --quiet - >&2
    echo "$shasum" >"$file.ok"
  fi
  echo "$file"
}

if [ ! -x "$dir/codex" ] || ! "$dir/codex" --version 2>/dev/null | grep -q "$codex_version"; then
  tgz=$(fetch @openai/codex "$codex_version-linux-x64")
  tar -xzf "$tgz" -C "$dir" --strip-components=4 package/vendor/x86_64-unknown-linux-musl/bin/codex
fi
if [ ! -x "$dir/claude" ] || ! "$dir/claude" --version 2>/dev/null | grep -q "$claude_version"; then
  tgz=$(fetch @anthropic-ai/claude-code-linux-x64 "$claude_version")
  tar -xzf "$tgz" -C "$dir" --strip-components=1 package/claude
fi
"$dir/codex" --version >&2
"$dir/claude" --version >&2
