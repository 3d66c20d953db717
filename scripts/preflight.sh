#!/usr/bin/env bash
# Checks, in a second and before anything is built, that this machine has
# what the README's two commands need, and says what the test suite will
# skip and why. A missing requirement stops here with the command that
# installs it, not after a quarter of an hour of building.
#
#   bash scripts/preflight.sh          the checks (scripts/test.sh runs them)
#   bash scripts/preflight.sh --packages
#                                      the Debian packages the README's
#                                      set-up line must install (.ci/run
#                                      compares the two)
set -euo pipefail

# The Debian packages the build and the suite need: llama.cpp builds from
# source (cmake, clang, libclang-dev); the /ui tests load the page in a
# real Chromium.
packages=(cmake clang libclang-dev chromium)

if [ "${1:-}" = "--packages" ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v clang >/dev/null || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
if [ "${CONCLAVE_SKIP_BROWSER:-}" != 1 ] && [ -z "${CONCLAVE_CHROMIUM:-}" ] \
    && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
    missing+=(chromium)
fi
problems=()
[ ${#missing[@]} -eq 0 ] || problems+=("missing Debian packages: ${missing[*]}; install them with:
    apt-get update && apt-get install -y ${missing[*]}")
command -v cargo >/dev/null || problems+=("no cargo: install Rust (stable) with rustup")
command -v rustup >/dev/null || problems+=("no rustup: the plugins need the wasm32-wasip2 target, which rustup installs")
command -v python3 >/dev/null || problems+=("no python3: install Python 3 with pip")
python3 -m pip --version >/dev/null 2>&1 || problems+=("python3 has no pip: apt-get install -y python3-pip")
command -v node >/dev/null || problems+=("no node: the JavaScript helpers' tests need Node.js (apt-get install -y nodejs npm)")
if [ ${#problems[@]} -gt 0 ]; then
    echo "error: this machine lacks what the test suite needs:" >&2
    for p in "${problems[@]}"; do echo "  - $p" >&2; done
    echo "(chromium is only for the /ui browser tests: CONCLAVE_SKIP_BROWSER=1 skips them instead)" >&2
    exit 1
fi

# What will be skipped, said now rather than at the end.
skips=()
[ "${CONCLAVE_SKIP_BROWSER:-}" = 1 ] && skips+=("the /ui browser tests (CONCLAVE_SKIP_BROWSER=1)")
if [ "${CONCLAVE_REQUIRE_PLUGIN_TOOLS:-}" != 1 ]; then
    if ! command -v componentize-py >/dev/null || [ ! -x target/js-tools/node_modules/.bin/jco ]; then
        skips+=("the Python and JavaScript template tests of \`conclave plugins new\` (their build tools are not installed: bash scripts/install-plugin-tools.sh)")
    fi
fi
if [ "${CONCLAVE_REQUIRE_CLIENTS:-}" != 1 ] && ! python3 -c 'import openai, litellm' 2>/dev/null; then
    skips+=("the tests behind the official openai SDK and LiteLLM (pip install openai litellm)")
fi
for s in "${skips[@]}"; do echo "note: will skip $s" >&2; done
exit 0
