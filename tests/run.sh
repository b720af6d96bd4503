#!/usr/bin/env bash
# Runs every test: Rust unit tests, the end-to-end tests (the real `weir`
# binary as a process), and the Python tests that use real client libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
cargo build --locked -p weir
WEIR_BIN="$PWD/target/debug/weir" python3 -m pytest tests/python -q
