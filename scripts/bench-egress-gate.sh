#!/usr/bin/env bash
# The egress path of a gated Docker bottle, measured without Docker: oha in a
# loopback-only network namespace (as the agent has: `--network none`),
# behind the launch gate's forwarder, which relays each connection to the
# proxy's Unix socket, as in a bottle. Interleaved with oha direct and oha to
# the proxy over TCP (what bench/egress measures), on the same upstream.
#
#   scripts/bench-egress-gate.sh [ROUNDS] [SECS]     (default 3 rounds of 5 s)
#
# Needs root (`unshare -n`), `ip`, python3, oha (`OHA=PATH`, default `oha` on
# PATH; bench/egress/peers/README.md says how to install it) and release
# builds: cargo build --release -p bot-bottle -p bot-bottle-egress \
#   -p bot-bottle-bench-egress -p bot-bottle-plugin-docker
# (the last builds the gate). Prints each run, then the medians: oha's
# keep-alive (c=16) and new-connection (c=4) phases, then SSE time to the
# first event on a warm connection (a Python client, 50 events a run).
# GATE=PATH runs another gate binary instead of the build's; GATE_B=PATH adds
# a row `gate-b` through that one too (an A/B of two gates in one run).
set -euo pipefail

rounds=${1:-3}
secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
rel=${CARGO_TARGET_DIR:-$root/target}/release
oha=${OHA:-oha}
gate=${GATE:-$(ls -t "$rel"/build/bot-bottle-plugin-docker-*/out/gate 2>/dev/null | head -1 || true)}
gate_b=${GATE_B:-}
rows="direct proxy-tcp gate-unix${gate_b:+ gate-b}"
for f in "$rel/bottle" "$rel/bot-bottle-egress" "$rel/bot-bottle-bench-egress" "$gate"; do
    if [ ! -x "$f" ]; then
        echo "missing ${f:-the gate}: cargo build --release -p bot-bottle -p bot-bottle-egress -p bot-bottle-bench-egress -p bot-bottle-plugin-docker" >&2
        exit 2
    fi
done
command -v "$oha" >/dev/null || { echo "no oha (set OHA=PATH; see bench/egress/peers/README.md)" >&2; exit 2; }

work=$(mktemp -d /tmp/bb-gate-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The bench makes what a run needs (the upstream's PKI, a proxy config that
# injects on `localhost`) in its work directory; a short run of its
# bot-bottle row is the way to get them.
"$rel/bot-bottle-bench-egress" --duration 0.3 --peers bot-bottle --work "$work/bench" >/dev/null 2>&1
# The upstream in its own process, as the bench runs it (`--ends split`); it
# lives as long as its stdin, a FIFO whose writing end this script holds
# (fd 3), so it ends with the script whatever happens.
mkfifo "$work/up.in"
"$rel/bot-bottle-bench-egress" --serve-upstream "$work/bench/upstream" <"$work/up.in" >"$work/up.out" &
pids+=($!)
exec 3>"$work/up.in"
for _ in $(seq 50); do [ -s "$work/up.out" ] && break; sleep 0.1; done
up=$(sed -n 's/^listening //p' "$work/up.out")
port=${up##*:}
python3 - "$work" "$up" <<'PY'
import json, sys
work, up = sys.argv[1], sys.argv[2]
c = json.load(open(f"{work}/bench/egress.json"))
c["upstream"]["resolve"] = {"localhost": up}
# The route names the upstream's port (routes allow 443 unless they do).
for r in c["routes"]:
    r["ports"] = [int(up.rsplit(":", 1)[1])]
c["audit"]["path"] = f"{work}/audit.jsonl"
json.dump(c, open(f"{work}/egress.json", "w"))
open(f"{work}/bundle.pem", "w").write(open(f"{work}/bench/upstream-ca.pem").read() + c["ca"]["cert_pem"])
PY
"$rel/bot-bottle-egress" --config "$work/egress.json" --listen 127.0.0.1:0 2>"$work/tcp.err" &
tcp_pid=$!
pids+=($tcp_pid)
"$rel/bottle" egress serve --config "$work/egress.json" --listen-unix "$work/egress.sock" 2>/dev/null &
unix_pid=$!
pids+=($unix_pid)
for _ in $(seq 50); do grep -q "listening on" "$work/tcp.err" 2>/dev/null && [ -S "$work/egress.sock" ] && break; sleep 0.1; done
tcp=$(sed -n 's/^listening on //p' "$work/tcp.err")

cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# One oha run: prints `req/s p50_ms p99_ms errors` (deadline cut-offs are
# oha's way of stopping, not errors).
summary() {
    python3 -c '
import json, sys
d = json.load(sys.stdin); s = d["summary"]; p = d["latencyPercentiles"]
e = sum(v for k, v in d["errorDistribution"].items() if "deadline" not in k)
print("%.0f %.3f %.3f %d" % (s["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, e))'
}
load() { echo "-z ${secs}s $1 --no-tui --output-format json --cacert $work/bundle.pem https://localhost:$port/1k"; }

# behind_gate ROW CMD...: CMD in a loopback-only network namespace, behind
# ROW's gate (gate-unix: GATE or the build's; gate-b: GATE_B), which waits
# for the proxy's socket, forks its forwarder on 127.0.0.1:3128 and execs
# CMD in its place.
behind_gate() {
    local g=$gate
    [ "$1" = gate-b ] && g=$gate_b
    shift
    unshare -n sh -c "ip link set lo up; exec $g $work/egress.sock 3128 - -- $*"
}

results=$work/results
for phase in "-c 16" "-c 4 --disable-keepalive"; do
    for r in $(seq "$rounds"); do
        for row in $rows; do
            case $row in
            direct) out=$($oha $(load "$phase") | summary); cpu_s=- ;;
            proxy-tcp)
                c0=$(cpu $tcp_pid)
                out=$($oha $(load "$phase") -x "http://$tcp" | summary)
                cpu_s=$(python3 -c "print($(cpu $tcp_pid) - $c0)") ;;
            gate-unix | gate-b)
                c0=$(cpu $unix_pid)
                out=$(behind_gate "$row" "$oha" $(load "$phase") -x http://127.0.0.1:3128 | summary)
                cpu_s=$(python3 -c "print($(cpu $unix_pid) - $c0)") ;;
            esac
            echo "$phase|$row|$out|$cpu_s" | tee -a "$results"
        done
    done
done

# SSE: one keep-alive connection (through the proxy if given: CONNECT, then
# TLS), 50 requests for /sse after a first; the median time from sending a
# request to its first event, in ms.
cat >"$work/sse.py" <<'PY'
import socket, ssl, statistics, sys, time
proxy, port, bundle, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
host, hport = proxy.rsplit(":", 1) if proxy != "-" else ("127.0.0.1", port)
s = socket.create_connection((host, int(hport)))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if proxy != "-":
    s.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=bundle)
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname="localhost")
lat = []
for i in range(n + 1):
    t0 = time.perf_counter()
    t.sendall(f"GET /sse HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    buf = b""
    while b"data: first" not in buf:
        buf += t.recv(65536)
    if i:
        lat.append((time.perf_counter() - t0) * 1e3)
    while not buf.endswith(b"0\r\n\r\n"):
        buf += t.recv(65536)
print("%.3f" % statistics.median(lat))
PY
sse_results=$work/sse-results
for r in $(seq "$rounds"); do
    for row in $rows; do
        case $row in
        direct) ms=$(python3 "$work/sse.py" - "$port" "$work/bundle.pem" 50) ;;
        proxy-tcp) ms=$(python3 "$work/sse.py" "$tcp" "$port" "$work/bundle.pem" 50) ;;
        gate-unix | gate-b)
            ms=$(behind_gate "$row" python3 "$work/sse.py" 127.0.0.1:3128 "$port" "$work/bundle.pem" 50) ;;
        esac
        echo "sse warm first event|$row|$ms ms" | tee -a "$sse_results"
    done
done

python3 - "$results" "$secs" "$sse_results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    phase, row, out, cpu = line.strip().split("|")
    rps, p50, p99, err = out.split()
    us = (float(cpu) * 1e6 / (float(rps) * float(sys.argv[2]))) if cpu != "-" else None
    rows.setdefault((phase, row), []).append((float(rps), float(p50), float(p99), int(err), us))
print("\nmedians                                  req/s   p50 ms   p99 ms  errors  proxy us/req")
for (phase, row), v in rows.items():
    med = lambda i: statistics.median(x[i] for x in v)
    us = "-" if v[0][4] is None else "%.1f" % med(4)
    print("%-27s %-10s %8.0f %8.3f %8.3f %7d %13s" % (phase, row, med(0), med(1), med(2), sum(x[3] for x in v), us))
sse = {}
for line in open(sys.argv[3]):
    _, row, ms = line.strip().split("|")
    sse.setdefault(row, []).append(float(ms.split()[0]))
print("\nmedians                  sse warm first event ms")
for row, v in sse.items():
    print("%-27s %-10s %8.3f" % ("sse", row, statistics.median(v)))
PY
