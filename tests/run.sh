#!/usr/bin/env bash
# Runs every test: the plugin SDK and first-party plugins (natively, and built
# to wasm for the proxy's tests), Rust unit tests, the end-to-end tests (the
# real `weir` binary as a process), and the Python tests that use real clients.
set -euo pipefail
cd "$(dirname "$0")/.."

(cd sdk && cargo test)
(cd plugins && cargo test && cargo build --release --target wasm32-wasip1)

# The failover tests run weir-blackhole (tests/loadgen) as backends to kill.
cargo build --locked -p weir-loadgen --bins
cargo test --workspace --locked
cargo build --locked -p weir
WEIR_BIN="$PWD/target/debug/weir" python3 -m pytest tests/python -q
