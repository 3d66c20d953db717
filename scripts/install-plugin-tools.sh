#!/usr/bin/env bash
# The tools that build Python and JavaScript plugins, for the tests of
# `conclave plugins new` (tests/all/scaffold.rs) and for CI: componentize-py
# from PyPI, and jco with componentize-js from npm into target/js-tools, at
# the versions (and with the overrides) of the JavaScript template's
# package.json, so the tests build with what an author's `npm install` gets.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    componentize-py==0.25.1
cargo build -q -p conclave --bin conclave
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/debug/conclave plugins new js-tools --kind voter --lang js --dir "$tmp" >/dev/null
mkdir -p target/js-tools
cp "$tmp/js-tools/package.json" target/js-tools/package.json
(cd target/js-tools && npm install --no-audit --no-fund --loglevel=error)
test -x target/js-tools/node_modules/.bin/jco
echo "$(componentize-py --version); jco in target/js-tools"
