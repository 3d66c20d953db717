#!/usr/bin/env bash
# The whole test suite: builds the guest components, then runs every test of
# the workspace (host, SDK, built-in plugins natively, end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo test --workspace "$@"
