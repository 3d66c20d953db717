#!/usr/bin/env bash
# Builds every guest component (the built-in plugins and the test fixtures)
# for wasm32-wasip2 and lays them out where the host and the tests look:
#   target/plugins/<name>.wasm    built-in plugins (plugins/*/*)
#   target/fixtures/<name>.wasm   hostile and malformed test fixtures
# Rust plugins build with cargo; Python ones (a folder with app.py, such as
# plugins/roles/programmer) with componentize-py, installed from PyPI at the
# pinned version when it is missing.
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
    [ -f "$dir/Cargo.toml" ] || continue
    pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    cp "$out/${pkg//-/_}.wasm" "target/plugins/$(basename "$dir").wasm"
done
for dir in tests/fixtures/*/; do
    [ -f "$dir/Cargo.toml" ] || continue
    pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    cp "$out/${pkg//-/_}.wasm" "target/fixtures/$(basename "$dir").wasm"
done
componentize_py=0.25.1
for dir in plugins/*/*/; do
    [ -f "$dir/app.py" ] || continue
    if [ "$(componentize-py --version 2>/dev/null)" != "componentize-py $componentize_py" ]; then
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
            "componentize-py==$componentize_py"
    fi
    name=$(basename "$dir")
    # The world is the folder above: roles/ -> role, verifiers/ -> verifier.
    world=$(basename "$(dirname "$dir")")
    componentize-py -d wit/0.2 -w "${world%s}" componentize app -p "$dir" -p sdk/python \
        -o "target/plugins/$name.wasm" >/dev/null
done
echo "built $(ls target/plugins | wc -l) plugins into target/plugins and $(ls target/fixtures | wc -l) fixtures into target/fixtures"
