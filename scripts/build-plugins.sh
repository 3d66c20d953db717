#!/usr/bin/env bash
# Builds every guest component (the built-in plugins and the test fixtures)
# for wasm32-wasip2 and lays them out where the host and the tests look:
#   target/plugins/<name>.wasm    built-in plugins (plugins/*/*)
#   target/fixtures/<name>.wasm   hostile and malformed test fixtures
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

packages=()
for dir in plugins/*/*/ tests/fixtures/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)")
done

cargo build --quiet --target wasm32-wasip2 --profile plugin "${packages[@]}"

out=target/wasm32-wasip2/plugin
mkdir -p target/plugins target/fixtures
for dir in plugins/*/*/; do
    pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    cp "$out/${pkg//-/_}.wasm" "target/plugins/$(basename "$dir").wasm"
done
for dir in tests/fixtures/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    cp "$out/${pkg//-/_}.wasm" "target/fixtures/$(basename "$dir").wasm"
done
echo "built $(ls target/plugins | wc -l) plugins into target/plugins and $(ls target/fixtures | wc -l) fixtures into target/fixtures"
