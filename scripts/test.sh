#!/usr/bin/env bash
# The whole test suite: checks the machine first (scripts/preflight.sh), builds the guest components, then runs every test of
# the workspace (host, SDK, built-in plugins natively, end-to-end tests) and
# the Python and JavaScript helpers' tests, and ends with one line totalling
# what cargo's test binaries reported. The tests of Python and JavaScript
# plugin templates need scripts/install-plugin-tools.sh; without it they are
# skipped, unless CONCLAVE_REQUIRE_PLUGIN_TOOLS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# Stops within seconds, naming the install command, when something the
# suite needs is missing; says what it will skip.
bash scripts/preflight.sh
bash scripts/build-plugins.sh
# The embedded-model tests use the small SmolLM2-135M (98 MB).
bash scripts/fetch-model.sh smollm2-135m >/dev/null
# The cluster tests start their own nats-server (2.15, into target/nats).
bash scripts/install-nats.sh >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# The Python and JavaScript plugin helpers against the Rust SDK's cases
# (sdk/cases/helpers.json), which `cargo test` ran on the Rust side.
python3 -m unittest discover -s sdk/python -t sdk/python || status=$?
# The programmer role's program guard, natively.
python3 -m unittest discover -s plugins/roles/programmer -p 'test_*.py' || status=$?
node --test sdk/js/ || status=$?
passed=$(sed -n 's/^test result: .* \([0-9]*\) passed; .*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: .*; \([0-9]*\) failed; .*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
ignored=$(sed -n 's/^test result: .*; \([0-9]*\) ignored; .*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed, $ignored skipped"
exit "$status"
