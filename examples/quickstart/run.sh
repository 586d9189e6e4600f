#!/usr/bin/env bash
# The quickstart, end to end, on a machine with Docker and a Rust toolchain:
# builds bot-bottle, two local images (no registry needed), starts a demo API
# on a Docker network, and runs the bottle in examples/quickstart/bottle.toml.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=examples/quickstart
net=bot-bottle-quickstart
api=bot-bottle-quickstart-api

docker info >/dev/null 2>&1 || { echo "run.sh: cannot reach the Docker daemon; start it (dockerd / systemctl start docker)" >&2; exit 1; }

echo "==> building bot-bottle (release)"
cargo build --release --quiet
cargo build --release --quiet -p bot-bottle-e2e --bin demo-upstream
# Where cargo put them (CARGO_TARGET_DIR moves it).
bin=${CARGO_TARGET_DIR:-target}/release

echo "==> building the local images"
"$bin/demo-upstream" certs --dir "$here/.certs" --host api.quickstart.test
scripts/image-from-binaries.sh bot-bottle/quickstart-agent curl cat
scripts/image-from-binaries.sh bot-bottle/demo-upstream "$bin/demo-upstream"

echo "==> starting the demo API (api.quickstart.test) on network $net"
cleanup() { docker rm -f "$api" >/dev/null 2>&1 || true; docker network rm "$net" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
# A fixed subnet and address: bottle.toml allows the proxy to dial exactly
# this one (egress.allow_internal). If the subnet clashes with one of yours,
# change it here and there.
docker network create --label bot-bottle.role=example --subnet 10.213.77.0/24 "$net" >/dev/null
docker run -d --name "$api" --label bot-bottle.role=example --network "$net" --ip 10.213.77.10 --network-alias api.quickstart.test \
  -v "$PWD/$here/.certs:/certs:ro" bot-bottle/demo-upstream /bin/demo-upstream serve --dir /certs >/dev/null

# The real credential lives on the host only.
export QUICKSTART_API_TOKEN=${QUICKSTART_API_TOKEN:-quickstart-real-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')}

echo "==> bottle plan"
"$bin/bottle" plan -f "$here/bottle.toml"
echo
echo "==> bottle run"
status=0
"$bin/bottle" run -f "$here/bottle.toml" || status=$?
echo
echo "==> what the API received (the real token, injected by the egress proxy):"
# The token is replaced as a literal string (it may hold `/`, `+` or `.`,
# which sed would read as its own syntax).
docker logs "$api" 2>/dev/null | TOKEN=$QUICKSTART_API_TOKEN awk '
    { out = ""; while ((i = index($0, ENVIRON["TOKEN"])) > 0) {
        out = out substr($0, 1, i - 1) "<the real QUICKSTART_API_TOKEN>"
        $0 = substr($0, i + length(ENVIRON["TOKEN"])) }
      print out $0 }'

exit $status
