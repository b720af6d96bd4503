#!/usr/bin/env bash
# Builds the C plugin with the zig toolchain from PyPI (pip install ziglang):
# clang for wasm32-wasi with a libc, nothing else needed.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-drop_matching.wasm}
python3 -m ziglang cc --target=wasm32-wasi -O2 -mexec-model=reactor -I ../../sdk/include \
    -Wl,--strip-all -o "$out" drop_matching.c
echo "built $out"
