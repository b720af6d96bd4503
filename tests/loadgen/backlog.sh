#!/usr/bin/env bash
# The disk buffer through a long outage: weir-loadgen -> weir -> (no backend), until the
# tenant's log holds $BACKLOG_MB; then the backend (weir-blackhole) comes back while new load
# keeps arriving, and the backlog drains. Reports, from one run:
#   backlog     events and MB in the log when the backend came back, and how long filling took
#   peak RSS    weir's VmHWM at the end of the outage (the backlog lives on disk, not in memory)
#   drain       seconds until the log is back under two segments, the events/s the blackhole got
#               meanwhile, and the events/s of new load weir accepted meanwhile
#   lost, dup   after a final SIGTERM: events of accepted requests missing at the backend, and
#               events it got more than once (per request tag, as bench.sh counts them)
# Usage: tests/loadgen/backlog.sh   (BACKLOG_MB=1024 CONNECTIONS=8 BUILD=1 WEIR=path KEEP=0)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/target/release"
BACKLOG_MB=${BACKLOG_MB:-1024}
CONNECTIONS=${CONNECTIONS:-8}
if [[ ${BUILD:-1} == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p weir -p weir-loadgen)
fi
source "$ROOT/tests/loadgen/lib.sh"
start_work weir-backlog
metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f\n", b - a }'; }

PORT=$(free_port)
ADMIN=$(free_port)
BH_PORT=$(free_port)
cat >"$WORK/weir.yaml" <<EOF
data_dir: $WORK/data
listeners: [{name: bench, address: "127.0.0.1:$PORT", protocol: http}]
admin: {address: "127.0.0.1:$ADMIN"}
log: {level: warn, format: text}
archive: {store: {type: local, root: $WORK/archive}}
buffer: {max_bytes_per_tenant: $((BACKLOG_MB * 2))MiB, max_bytes: $((BACKLOG_MB * 2))MiB}
backends:
  - name: blackhole
    type: datadog
    endpoint: http://127.0.0.1:$BH_PORT
    compression: gzip
    retry: {initial_backoff: 100ms, max_backoff: 1s}
tenants:
  - {name: bench, api_keys: [bench-agent-key], backend: blackhole, upstream_api_key: k}
EOF
"${WEIR:-$BIN/weir}" run --config "$WORK/weir.yaml" >"$WORK/weir.log" 2>&1 &
WEIR_PID=$!
PIDS+=("$WEIR_PID")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done

echo "== outage: load until the log holds ${BACKLOG_MB} MB" >&2
"$BIN/weir-loadgen" --url "http://127.0.0.1:$PORT" --api-key bench-agent-key --connections "$CONNECTIONS" \
    --duration 3600 --gzip --accepted-ids "$WORK/accepted1.ids" >"$WORK/loadgen1.json" 2>"$WORK/loadgen1.err" &
LG=$!
PIDS+=("$LG")
t0=$(now)
while (( $(metric weir_buffer_bytes) < BACKLOG_MB * 1048576 )); do sleep 0.5; done
kill -INT "$LG" 2>/dev/null || true
wait "$LG" 2>/dev/null || true
fill_s=$(since "$t0")
backlog_bytes=$(metric weir_buffer_bytes)
backlog_events=$(metric weir_received_events_total)
rss_outage=$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$WEIR_PID/status")

echo "== recovery: the backend comes back while new load arrives" >&2
"$BIN/weir-blackhole" --addr "127.0.0.1:$BH_PORT" --count-request-tags >"$WORK/blackhole.out" 2>/dev/null &
PIDS+=("$!")
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$BH_PORT/stats" >/dev/null && break; sleep 0.1; done
"$BIN/weir-loadgen" --url "http://127.0.0.1:$PORT" --api-key bench-agent-key --connections "$CONNECTIONS" \
    --duration 3600 --gzip --accepted-ids "$WORK/accepted2.ids" >"$WORK/loadgen2.json" 2>"$WORK/loadgen2.err" &
LG=$!
PIDS+=("$LG")
t1=$(now)
r1=$(metric weir_received_events_total)
two_segments=$((64 * 1048576))
while (( $(metric weir_buffer_bytes) > two_segments )); do sleep 0.5; done
drain_s=$(since "$t1")
delivered=$(curl -sf "http://127.0.0.1:$BH_PORT/stats" | jq -r .events)
r2=$(metric weir_received_events_total)
kill -INT "$LG" 2>/dev/null || true
wait "$LG" 2>/dev/null || true
rss_all=$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$WEIR_PID/status")
kill -TERM "$WEIR_PID"
wait "$WEIR_PID" || true

# Every accepted request's events at the backend, by request tag (bench.sh's check).
curl -sf "http://127.0.0.1:$BH_PORT/request-tags" >"$WORK/backend.tags"
cat "$WORK/accepted1.ids" "$WORK/accepted2.ids" >"$WORK/accepted.ids"
batch=$(( $(jq -r .events_sent_accepted "$WORK/loadgen1.json") / $(jq -r .accepted "$WORK/loadgen1.json") ))
# The two load runs number their requests from 0 alike: a tag accepted twice carries two batches.
check=$(awk -v b="$batch" '
    FNR == NR { acc[$1] += b; next }
    { got[$1] = $2 }
    END { for (id in acc) { g = got[id] + 0; w = acc[id]; if (g < w) lost += w - g; if (g > w) dup += g - w }
          printf "lost %d, duplicates %d", lost, dup }' "$WORK/accepted.ids" "$WORK/backend.tags")

awk -v mb="$((backlog_bytes / 1048576))" -v ev="$backlog_events" -v fill="$fill_s" -v rss="$rss_outage" \
    -v drain="$drain_s" -v delivered="$delivered" -v newev="$((r2 - r1))" -v rssall="$rss_all" -v check="$check" 'BEGIN {
    printf "backlog: %d events, %d MB in the log, filled in %.1f s; weir peak RSS at the end of the outage %d MB\n", ev, mb, fill, rss
    printf "drain: %.1f s to empty the log; the backend got %.0f events/s meanwhile; weir accepted %.0f new events/s meanwhile\n", drain, delivered / drain, newev / drain
    printf "whole run: weir peak RSS %d MB; %s\n", rssall, check
}'
