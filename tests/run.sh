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
# Test peers from Debian: promtool (package prometheus) checks the /metrics
# exposition; rsyslog (with gnutls) and syslog-ng relay syslog to weir. The two
# syslog daemons conflict as packages (both are system-log-daemon), so
# syslog-ng-core is unpacked into target/peers/syslog-ng, its libraries installed.
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
apt_updated=0
apt_update() {
    [ "$apt_updated" = 1 ] || $sudo apt-get update -qq
    apt_updated=1
}
if ! command -v promtool >/dev/null; then
    if ! { apt_update && apt_install prometheus; } || ! command -v promtool >/dev/null; then
        echo "WARNING: could not install Debian's prometheus (promtool): the promtool metrics test is SKIPPED" >&2
        export WEIR_SKIP_PROMTOOL=1
    fi
fi
syslog_ng="$PWD/target/peers/syslog-ng"
if ! command -v rsyslogd >/dev/null || [ ! -x "$syslog_ng/usr/sbin/syslog-ng" ]; then
    if ! {
        apt_update && apt_install rsyslog rsyslog-gnutls \
            $(apt-cache depends --no-recommends --no-suggests syslog-ng-core | awk '$1 == "Depends:" && $2 !~ /^</ {print $2}') &&
        rm -rf "$syslog_ng" && mkdir -p "$syslog_ng/deb" &&
        (cd "$syslog_ng/deb" && apt-get download -q syslog-ng-core >/dev/null 2>&1) &&
        dpkg-deb -x "$syslog_ng"/deb/syslog-ng-core_*.deb "$syslog_ng"
    }; then
        echo "WARNING: could not install rsyslog and syslog-ng: the syslog relay tests are SKIPPED" >&2
        export WEIR_SKIP_SYSLOG_PEERS=1
    fi
fi
export WEIR_SYSLOG_NG="$syslog_ng"
# Fleet-mode peers (tests/e2e/fleet.rs): HAProxy in front of three weir and a
# redis-server they share. Unpacked, not installed: the packages' postinst would
# start services (redis on 6379); their libraries are installed with apt, so no
# LD_LIBRARY_PATH. redis-server is a symlink to redis-check-rdb (argv[0] picks).
peers="$PWD/target/peers"
haproxy_bin="$peers/haproxy/usr/sbin/haproxy"
redis_bin="$peers/redis/usr/bin/redis-server"
fleet_peers_ok() { "$haproxy_bin" -v >/dev/null 2>&1 && "$redis_bin" --version >/dev/null 2>&1; }
if ! fleet_peers_ok; then
    if ! {
        apt_update && apt_install \
            $(apt-cache depends --no-recommends --no-suggests haproxy redis-tools |
                awk '$1 == "Depends:" && $2 !~ /^</ && $2 != "adduser" && $2 != "lsb-base" {print $2}' | sort -u) &&
        rm -rf "$peers/haproxy" "$peers/redis" && mkdir -p "$peers/haproxy/deb" "$peers/redis/deb" &&
        (cd "$peers/haproxy/deb" && apt-get download -q haproxy >/dev/null 2>&1) &&
        (cd "$peers/redis/deb" && apt-get download -q redis-tools redis-server >/dev/null 2>&1) &&
        dpkg-deb -x "$peers"/haproxy/deb/haproxy_*.deb "$peers/haproxy" &&
        (for deb in "$peers"/redis/deb/*.deb; do dpkg-deb -x "$deb" "$peers/redis" || exit 1; done) &&
        fleet_peers_ok
    }; then
        echo "WARNING: could not unpack Debian's haproxy and redis-server: the fleet tests are SKIPPED" >&2
        export WEIR_SKIP_FLEET=1
    fi
fi
export WEIR_HAPROXY="$haproxy_bin" WEIR_REDIS_SERVER="$redis_bin"
# Archive store emulators (tests/python/cloud_emulators.py): Azurite, Microsoft's
# Azure Storage emulator, from npm into target/peers/azurite (pinned; node and npm
# from Debian if missing); the GCS emulator and both clouds' SDKs come from
# requirements.txt. WEIR_AZURITE, or WEIR_SKIP_AZURITE=1 with a warning.
azurite_version=3.35.0
azurite_dir="$peers/azurite"
azurite_bin="$azurite_dir/node_modules/.bin/azurite-blob"
azurite_ok() { [ "$("$azurite_bin" --version 2>/dev/null)" = "$azurite_version" ]; }
if ! azurite_ok; then
    if ! {
        { command -v npm >/dev/null || { apt_update && apt_install nodejs npm; }; } &&
        mkdir -p "$azurite_dir" &&
        npm install --silent --no-audit --no-fund --no-save --prefix "$azurite_dir" "azurite@$azurite_version" >/dev/null &&
        azurite_ok
    }; then
        echo "WARNING: could not install Azurite (npm azurite@$azurite_version): the Azure archive tests are SKIPPED" >&2
        export WEIR_SKIP_AZURITE=1
    fi
fi
export WEIR_AZURITE="$azurite_bin"

# --- tests ---
(cd sdk && cargo test)
(cd plugins && cargo test && cargo build --release --target wasm32-wasip1)
# Fuzz each intake decoder and the HTTP decompression for FUZZ_SECONDS (default 20)
# each; installs cargo-fuzz (and a nightly toolchain) if missing. A crash fails the run.
# Before the workspace's own build, so that with FUZZ_DISCARD_BUILD=1 (.ci/run) the
# two big builds are never on disk at once.
bash proxy/fuzz/run.sh

# The failover tests run weir-blackhole (tests/loadgen) as backends to kill.
cargo build --locked -p weir-loadgen --bins
# Also builds target/debug/weir, the binary the end-to-end and Python tests run.
cargo test --workspace --locked
WEIR_BIN="$PWD/target/debug/weir" python3 -m pytest tests/python -q
