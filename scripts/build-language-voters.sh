#!/usr/bin/env bash
# The same voter in three languages, for `conclave bench languages`: the
# `conclave plugins new --kind voter` template (one policy: plurality with a
# verifier-score tie-break) generated in Rust, Python and JavaScript and
# built with each language's own tool, into target/languages/voter-LANG.wasm.
# Needs the tools of scripts/install-plugin-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p conclave --bin conclave
out=target/languages
rm -rf "$out/src"
mkdir -p "$out/src"
export PATH="$PWD/target/js-tools/node_modules/.bin:$PATH"
for lang in rust python js; do
    name="voter-$lang"
    ./target/debug/conclave plugins new "$name" --kind voter --lang "$lang" --dir "$out/src" >/dev/null
    (
        cd "$out/src/$name"
        start=$SECONDS
        case "$lang" in
            rust)
                CARGO_TARGET_DIR="$PWD/../../rust-target" cargo build -q --release --target wasm32-wasip2
                cp "../../rust-target/wasm32-wasip2/release/${name//-/_}.wasm" "../../$name.wasm"
                ;;
            python)
                componentize-py -d wit -w voter componentize app -o "../../$name.wasm" >/dev/null
                ;;
            js)
                ln -s "$PWD/../../../js-tools/node_modules" node_modules
                npm run -s build >/dev/null
                cp "$name.wasm" "../../$name.wasm"
                ;;
        esac
        echo "$lang: built in $((SECONDS - start)) s, $(wc -c <"../../$name.wasm") bytes"
    )
done
