#!/usr/bin/env bash
# Sets up what a fresh machine lacks, then runs every test: the plugin SDK and
# first-party plugins (natively, and built to wasm for the proxy's tests), Rust
# unit tests, the end-to-end tests (the real `weir` binary as a process), and
# the Python tests that use real clients. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- set-up (idempotent; quick once done) ---
rustup target add wasm32-wasip1
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# Test peers from Debian: promtool (package prometheus) checks the /metrics exposition.
if ! command -v promtool >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
        || ! command -v promtool >/dev/null; then
        echo "WARNING: could not install Debian's prometheus (promtool): the promtool metrics test is SKIPPED" >&2
        export WEIR_SKIP_PROMTOOL=1
    fi
fi

# --- tests ---
(cd sdk && cargo test)
(cd plugins && cargo test && cargo build --release --target wasm32-wasip1)

# The failover tests run weir-blackhole (tests/loadgen) as backends to kill.
cargo build --locked -p weir-loadgen --bins
cargo test --workspace --locked
cargo build --locked -p weir
WEIR_BIN="$PWD/target/debug/weir" python3 -m pytest tests/python -q
