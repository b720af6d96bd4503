#!/usr/bin/env bash
# Fuzzes every intake decoder (and the HTTP intake's decompression), the
# exclusion-rule query parser and matcher, the YAML config and the plugin result
# decoder for a fixed time each, with cargo fuzz (libFuzzer); fails if any
# target crashes.
#
#   proxy/fuzz/run.sh                     every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=60 proxy/fuzz/run.sh hec otlp
#
# Installs what it lacks: a nightly toolchain and cargo-fuzz. A decoder's target
# takes one selector byte, then the payload (see src/lib.rs; query and config take
# their text whole); the seeds in corpus/<target>/
# are copied to a temporary corpus, so a run leaves the checked-in corpus as it
# was. A crash's input is kept in artifacts/<target>/, and its path and the
# command that reproduces it are printed.
#
# Knobs: FUZZ_SECONDS (per target), FUZZ_MAX_LEN (largest input, default 1 MiB),
# FUZZ_TIMEOUT (seconds one input may take before it counts as a hang, default
# 10), FUZZ_SANITIZER (none or address, default none: see BUILD below),
# FUZZ_TARGET_DIR (the build's, default target/<sanitizer> here: a folder outside
# the checkout keeps the build across fresh clones; a cold build takes 11 minutes
# or more on two cores, a warm one seconds, or about 2.5 when weir changed),
# FUZZ_DISCARD_BUILD=1 (delete that build when done, fuzzed or not: it takes
# about 5 GB, and a one-off run such as CI's has no use for it afterwards).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-20}"
max_len="${FUZZ_MAX_LEN:-1048576}"
input_timeout="${FUZZ_TIMEOUT:-10}"
sanitizer="${FUZZ_SANITIZER:-none}"
target_dir="${FUZZ_TARGET_DIR:-$here/target/$sanitizer}"

# --- set-up (idempotent) ---
# cargo fuzz needs nightly features. Without a nightly toolchain (none installed,
# and none to be had where only crates.io is reached), the stable one lends them
# with RUSTC_BOOTSTRAP=1, which cargo fuzz accepts as nightly.
toolchain=(+nightly)
if ! rustup toolchain list | grep -q '^nightly'; then
    if ! timeout 600 rustup toolchain install nightly --profile minimal; then
        echo "no nightly toolchain: building with the default one and RUSTC_BOOTSTRAP=1" >&2
        export RUSTC_BOOTSTRAP=1
        toolchain=()
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# BUILD: optimized, with debug assertions and overflow checks (cargo fuzz's default
# without -O: an arithmetic overflow is a crash), libFuzzer's coverage
# instrumentation, and no sanitizer by default. The decoders are safe Rust; with
# AddressSanitizer the targets ran about 6 times fewer inputs a second at 4 times
# the memory, and the build took a quarter more CPU time. FUZZ_SANITIZER=address
# brings it back (a build of its own, kept apart from this one's).
build=(--fuzz-dir "$here" --sanitizer "$sanitizer" --target-dir "$target_dir")
cargo "${toolchain[@]}" fuzz build "${build[@]}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list --fuzz-dir "$here")
fi

work="$(mktemp -d)"
discard=()
[ "${FUZZ_DISCARD_BUILD:-0}" = 1 ] && discard=("$target_dir")
trap 'rm -rf "$work" "${discard[@]}"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus-$t"
    mkdir -p "$corpus" "artifacts/$t"
    marker="$work/started-$t"
    touch "$marker"
    log="$work/$t.log"
    echo "=== fuzzing $t for ${seconds}s"
    # New inputs go to the first corpus folder (the temporary one); the seeds are read only.
    if cargo "${toolchain[@]}" fuzz run "${build[@]}" "$t" "$corpus" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout="$input_timeout" \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASHED
        failed+=("$t")
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    cov="$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+')"
    line="$t: $status, ${runs:-?} runs, ${cov:-cov: ?}"
    summary+=("$line")
    echo "$line"
    if [ "$status" != ok ]; then
        # What went wrong (a panic's message and place, libFuzzer's verdict); the
        # whole log, backtrace included, is kept beside the crash input.
        cp "$log" "artifacts/$t/last-run.log"
        grep -A1 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | head -20 || true
        echo "log:         $here/artifacts/$t/last-run.log"
        find "artifacts/$t" -type f -newer "$marker" ! -name last-run.log | while read -r a; do
            echo "crash input: $here/$a"
            echo "reproduce:   (cd $here && ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }cargo ${toolchain[*]} fuzz run ${build[*]:2} $t $a)"
        done
    fi
done

echo "=== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
