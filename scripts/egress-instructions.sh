#!/usr/bin/env bash
# User-space instructions per request of the egress proxy, for one or more
# proxy binaries measured back to back, with the ratio to the first.
#
#   scripts/egress-instructions.sh [BIN ...]    (default: target/release/bot-bottle-egress)
#
# Why: on a shared 2-core machine requests/s and CPU µs per request move by
# 20-30% from run to run with the load of whatever else runs, which hides a
# 5-10% change. Instructions counted by callgrind do not depend on the load,
# so an A/B of two builds shows what a change did to the proxy's own work.
# Kernel time (about 45% of the proxy's CPU, mostly loopback TCP) is not
# counted: bench/egress stays the measure of speed; this is the microscope.
#
# Each binary runs under `valgrind --tool=callgrind` as the `bot-bottle`
# peer of bench/egress; instrumentation is switched on for 3 s of the
# keep-alive phase (c=16, 1 KiB responses) only, and requests are counted
# as calls of the audit writer (one line per request).
# Needs valgrind (`apt-get install -y valgrind`) and a release build of
# bench/egress (`cargo build --release -p bot-bottle-bench-egress`).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || {
    echo "valgrind not found: apt-get install -y valgrind" >&2
    exit 1
}
bench=target/release/bot-bottle-bench-egress
[ -x "$bench" ] || {
    echo "$bench not found: cargo build --release -p bot-bottle-egress -p bot-bottle-bench-egress" >&2
    exit 1
}
[ $# -gt 0 ] || set -- target/release/bot-bottle-egress

work=$(mktemp -d /tmp/bb-egress-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT
first=""
for bin in "$@"; do
    bin=$(realpath "$bin")
    wrap="$work/wrap.sh"
    cat >"$wrap" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/cg.%p "$bin" "\$@"
EOF
    chmod +x "$wrap"
    rm -f "$work"/cg.*
    "$bench" --duration 8 --peers bot-bottle --egress-bin "$wrap" --work "$work/bench" \
        >"$work/bench.txt" 2>&1 &
    runner=$!
    # Valgrind starts the proxy in ~1 s and the bench warms up for 0.5 s;
    # the keep-alive phase runs from then for 8 s.
    sleep 3.5
    callgrind_control -i on >/dev/null 2>&1
    sleep 3
    callgrind_control -i off >/dev/null 2>&1
    callgrind_control -d >/dev/null 2>&1
    wait "$runner" || true
    out=$(ls "$work"/cg.*.1 2>/dev/null | head -1)
    [ -n "$out" ] || {
        echo "no callgrind dump for $bin; bench output:" >&2
        cat "$work/bench.txt" >&2
        exit 1
    }
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    # (awk reads to the end: an early exit would SIGPIPE callgrind_annotate.)
    reqs=$(callgrind_annotate --inclusive=yes --tree=calling "$out" 2>/dev/null |
        awk '/> +\?\?\?:bot_bottle_egress::audit::Audit::write \(/ && !n {
            n = $0; sub(/.*\(/, "", n); sub(/x\).*/, "", n); gsub(",", "", n) }
            END { print n }')
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || {
        echo "could not count requests in $out" >&2
        exit 1
    }
    per=$((total / reqs))
    if [ -z "$first" ]; then
        first=$per
        printf '%-50s %9d instructions/request over %d requests\n' "$bin" "$per" "$reqs"
    else
        printf '%-50s %9d instructions/request over %d requests (%.2fx the first)\n' \
            "$bin" "$per" "$reqs" "$(echo "$per / $first" | bc -l)"
    fi
done
