#!/usr/bin/env bash
# End-to-end throughput benchmark: weir-loadgen -> weir -> weir-blackhole, all
# on this machine. Each scenario starts a fresh blackhole and a fresh weir
# (so peak RSS is per scenario), loads it for $DURATION seconds and measures
# over a steady-state window that skips the first $WARMUP seconds:
#   events/s    counted where events come out (the blackhole), over the window
#   MB/s in     decompressed bytes weir accepted (weir_received_bytes_total), over the window
#   weir CPU%   utime+stime delta from /proc/<pid>/stat over the window (2 cores = 200%)
#   peak RSS    VmHWM from /proc/<pid>/status at the end of the load
#   503s        requests weir refused for backpressure (loadgen pauses per Retry-After)
#   lost, dup   per request (each request's events carry a weir_req:N tag): events of accepted (202)
#               requests the blackhole never got, and events it got more than once, after weir's
#               drain; the same for the archive when it is on. Any loss, any duplicate, or weir
#               exiting non-zero fails the benchmark (exit 1), after the table is printed.
#   other CPU%  machine-wide busy time not used by the three benchmark processes (noise)
#
# Usage: tests/loadgen/bench.sh
# Environment (all optional):
#   DURATION=20 WARMUP=3     load time and the part of it not measured (s)
#   CONNECTIONS=8            default connections per scenario
#   LG_GZIP=1                loadgen gzips bodies (as agents do); 0 sends plain JSON
#   LG_ZSTD=1                loadgen sends zstd bodies instead (LG_GZIP is then ignored)
#   SCENARIOS="..."          space-separated name:backend_codec:archive(on|off)[:connections[:max_in_flight[:plugin[:buffer[:protocol]]]]]
#                            (max_in_flight: the backend's requests in flight; empty = weir's default, 8;
#                             plugin: a .wasm path, or a name under plugins/target/wasm32-wasip1/release,
#                             e.g. "none:gzip:on empty:gzip:on:::empty redact:gzip:on:::redact" for ratios from one run;
#                             buffer: durable (the default: disk buffer, fsync per group commit), durable-50ms (fsync
#                             every 50 ms), received (disk buffer, answered at once) or memory (no disk buffer);
#                             protocol: the intake protocol loadgen speaks, with the same events: datadog (the
#                             default), input, otlp, hec, elasticsearch, syslog or fluent; the last two on a listener
#                             of that protocol, never compressed. Only datadog and input requests carry per-request
#                             tags: for the others lost and dup compare counts (accepted against delivered, archived))
#   PROTOCOL=datadog         the protocol of scenarios that do not name one
#   EXTRA="..."              more scenarios, appended to the default ones
#   BUILD=0                  skip the cargo build
#   WEIR=path                the weir binary to measure (default: the release build), for A/B runs
#   RULES=1                  configure 20 exclusion rules, a daily quota and a rate limit (the full path)
#   FLEET=redis://H:P/       fleet mode against this Redis (with RULES=1, the quota and rate limit are
#                            the fleet's: synced every second); the run waits until it is shared
#   TAILS=0                  live tails held open during the load (curl reading GET /admin/tail), each
#                            with the query TAIL_QUERY (default 'status:error *timeout*': rare, so each
#                            tail matches as many events as its budget allows)
#   BUFFER=durable           the buffer of scenarios that do not name one (see SCENARIOS)
#   PLUGIN=path.wasm         run this Wasm plugin on every batch (e.g. plugins/target/wasm32-wasip1/release/redact.wasm)
#   PLUGIN_CONFIG='{...}'    the plugin's config, YAML flow style (e.g. '{detectors: [email, credit_card]}')
#   ARCHIVE_COMPRESSION=zstd the archive's objects: gzip (default) or zstd
#   INFLIGHT=16MiB           limits.max_inflight_request_bytes (default: weir's)
#   KEEP=1                   keep the temp dir (configs, logs, archive objects)
#   RESULTS_OUT=/tmp/weir-bench-results.jsonl   where each scenario's full JSON line is copied
# Needs curl, jq, ss (iproute2), column, zcat and zstdcat. The three processes share the
# machine's cores, so on a small machine the numbers bound weir from below.
set -euo pipefail

# RULES=1: the "full path" of issue 3: 20 exclusion rules (7 global, 13 for the tenant,
# as an SRE would write them; they match rarely, so the index volume stays comparable),
# a daily quota partitioned by service and a rate limit, none of them ever exceeded.
bench_rules() {
    cat <<'RULES'
    rate_limit: {events_per_second: 100000000, bytes_per_second: 4000MiB}
    daily_quota: {max_events: 100000000000, partition_by: [service], warning_threshold: 0.9}
    exclusion_rules:
      - {name: r1, query: 'service:billing status:debug', sample_rate: 0.9}
      - {name: r2, query: '@http.status_code:[300 TO 399]', sample_rate: 0.5}
      - {name: r3, query: 'host:db-* status:info'}
      - {name: r4, query: '*timeout* -status:error'}
      - {name: r5, query: 'source:kafka @duration_ms:>5000'}
      - {name: r6, query: 'env:staging'}
      - {name: r7, query: '"health check"'}
      - {name: r8, query: 'service:(search OR recommendations) status:debug'}
      - {name: r9, query: '@http.url_details.path:\/healthz'}
      - {name: r10, query: 'version:0.9 status:info', sample_rate: 0.99}
      - {name: r11, query: 'host:canary-* -status:(error OR warn)'}
      - {name: r12, query: 'NOT env:prod'}
      - {name: r13, query: 'source:redis @duration_ms:<1 status:debug'}
exclusion_rules:
  - {name: g1, query: 'service:synthetics'}
  - {name: g2, query: '@usr.id:bot-*'}
  - {name: g3, query: 'status:trace'}
  - {name: g4, query: '"GET /favicon.ico"'}
  - {name: g5, query: 'source:lb @http.status_code:204'}
  - {name: g6, query: 'env:dev'}
  - {name: g7, query: 'service:checkout status:debug @duration_ms:<10', sample_rate: 0.9}
RULES
}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/target/release"
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-8}
LG_GZIP=${LG_GZIP:-1}
SCENARIOS=${SCENARIOS:-"gzip+archive:gzip:on gzip+no-archive:gzip:off zstd+archive:zstd:on"}
SCENARIOS="$SCENARIOS ${EXTRA:-}"
WINDOW=$((DURATION - WARMUP - 1))
((WINDOW >= 2)) || { echo "DURATION must exceed WARMUP by at least 3 s" >&2; exit 2; }
HZ=$(getconf CLK_TCK)

if [[ ${BUILD:-1} == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p weir -p weir-loadgen)
fi

source "$ROOT/tests/loadgen/lib.sh"
start_work weir-bench
RESULTS="$WORK/results.jsonl"

# utime+stime of a process, in clock ticks (fields 14 and 15 of /proc/pid/stat;
# counted after the ")" closing the command name, which may hold spaces).
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Sum of a Prometheus metric across its labels (an integer unless a printf format is given).
# Per request tag: events of accepted requests missing ("lost"), events beyond a request's
# batch ("dup"), and events of requests the load generator never saw accepted ("stray": a
# timed-out request the proxy took anyway, which is neither lost nor duplicated).
tag_check() {
    local accepted_ids=$1 got=$2 batch=$3
    awk -v b="$batch" '
        FNR == NR { acc[$1] = 1; next }
        { got[$1] = $2 }
        END {
            for (id in acc) { g = got[id] + 0; if (g < b) lost += b - g; if (g > b) dup += g - b }
            for (id in got) if (!(id in acc)) stray += got[id]
            printf "{\"lost\":%d,\"dup\":%d,\"stray\":%d}\n", lost, dup, stray
        }' "$accepted_ids" "$got"
}

# Without per-request tags: what is missing and what is extra, by count.
count_check() {
    awk -v a="$1" -v g="$2" 'BEGIN { printf "{\"lost\":%d,\"dup\":%d,\"stray\":0}\n", (a > g ? a - g : 0), (g > a ? g - a : 0) }'
}

# Events (lines) in the archive's objects.
zcat_count() {
    { find "$1" -name '*.ndjson.gz' -print0 | xargs -0 -r zcat
      find "$1" -name '*.ndjson.zst' -print0 | xargs -0 -r zstdcat; } | wc -l
}

metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" -v f="${2:-%.0f}" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf f "\n", s }'; }

bh_stat() { curl -sf "http://$BH_ADDR/stats" | jq -r ".$1"; }

now() { date +%s.%N; }

# Busy clock ticks of the whole machine (all cores): to tell how much CPU other work took.
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

run_scenario() {
    local name=$1 codec=$2 archive=$3 conns=${4:-$CONNECTIONS} in_flight=${5:-} plugin=${6:-${PLUGIN:-}} buffer=${7:-${BUFFER:-durable}} protocol=${8:-${PROTOCOL:-datadog}}
    local listener="protocol: http" tagged=0
    case $protocol in
        datadog|input) tagged=1 ;;
        otlp|hec|elasticsearch) ;;
        syslog) listener=$'protocol: syslog\n    tenant: bench' ;;
        fluent) listener=$'protocol: fluent_forward\n    tenant: bench' ;;
        *) echo "unknown protocol $protocol" >&2; exit 2 ;;
    esac
    if [[ -n $plugin && $plugin != */* ]]; then
        plugin="$ROOT/plugins/target/wasm32-wasip1/release/$plugin.wasm"
    fi
    local dir="$WORK/${name//[^A-Za-z0-9+_.-]/_}"
    mkdir -p "$dir"
    echo "== $name: $protocol intake, backend $codec${in_flight:+ (max_in_flight $in_flight)}, archive $archive, buffer $buffer, $conns connections, ${DURATION}s (window ${WINDOW}s)" >&2

    "$BIN/weir-blackhole" --addr 127.0.0.1:0 --count-request-tags >"$dir/blackhole.out" 2>"$dir/blackhole.err" &
    local bh=$!
    PIDS+=("$bh")
    for _ in $(seq 50); do [[ -s "$dir/blackhole.out" ]] && break; sleep 0.1; done
    BH_ADDR=$(head -1 "$dir/blackhole.out" | jq -r .listening)

    local port
    port=$(free_port)
    ADMIN=$(free_port)
    local enabled=true
    [[ $archive == off ]] && enabled=false
    cat >"$dir/weir.yaml" <<EOF
data_dir: $dir/data
listeners:
  - name: bench
    address: 127.0.0.1:$port
    $listener
admin:
  address: 127.0.0.1:$ADMIN
  token: bench-admin-token
${INFLIGHT:+limits: {max_inflight_request_bytes: $INFLIGHT\}}
log:
  level: warn
  format: text
archive:
  enabled: $enabled
  compression: ${ARCHIVE_COMPRESSION:-gzip}
  # So that the drain wait below sees the last events archived within seconds.
  max_object_age: 5s
  store:
    type: local
    root: $dir/archive
backends:
  - name: blackhole
    type: datadog
    endpoint: http://$BH_ADDR
    compression: $codec
${in_flight:+    max_in_flight: $in_flight}
tenants:
  - name: bench
    api_keys: [bench-agent-key]
    backend: blackhole
    upstream_api_key: bench-upstream-key
EOF
    if [[ ${RULES:-0} == 1 ]]; then
        bench_rules >>"$dir/weir.yaml"
    fi
    if [[ -n $plugin ]]; then
        printf '    plugins:\n      - {name: bench-plugin, path: %s%s}\n' "$plugin" "${PLUGIN_CONFIG:+, config: $PLUGIN_CONFIG}" >>"$dir/weir.yaml"
    fi
    # Top-level, after the tenant's own lines.
    case $buffer in
        durable) ;;
        durable-50ms) echo "buffer: {sync: 50ms}" >>"$dir/weir.yaml" ;;
        received) echo "buffer: {ack: received}" >>"$dir/weir.yaml" ;;
        memory) echo "buffer: {type: memory}" >>"$dir/weir.yaml" ;;
        *) echo "unknown buffer $buffer" >&2; exit 2 ;;
    esac
    if [[ -n ${FLEET:-} ]]; then
        printf 'fleet:\n  redis: {url: "%s"}\n' "$FLEET" >>"$dir/weir.yaml"
    fi
    "${WEIR:-$BIN/weir}" run --config "$dir/weir.yaml" >"$dir/weir.log" 2>&1 &
    local weir=$!
    PIDS+=("$weir")
    local ready=0
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && { ready=1; break; }
        kill -0 "$weir" 2>/dev/null || break
        sleep 0.1
    done
    ((ready)) || { echo "weir did not become ready; log:" >&2; cat "$dir/weir.log" >&2; exit 1; }
    if [[ -n ${FLEET:-} ]]; then
        for _ in $(seq 100); do
            [[ $(curl -sf "http://127.0.0.1:$ADMIN/readyz" | jq -r .fleet.mode) == shared ]] && break
            sleep 0.1
        done
        [[ $(curl -sf "http://127.0.0.1:$ADMIN/readyz" | jq -r .fleet.mode) == shared ]] || { echo "fleet mode is not shared: is Redis at $FLEET?" >&2; exit 1; }
    fi
    local t
    for t in $(seq "${TAILS:-0}"); do
        curl -sN -H "Authorization: Bearer bench-admin-token" -G "http://127.0.0.1:$ADMIN/admin/tail" \
            --data-urlencode tenant=bench --data-urlencode "query=${TAIL_QUERY:-status:error *timeout*}" \
            >"$dir/tail$t.out" 2>&1 &
        PIDS+=($!)
    done
    if ((${TAILS:-0} > 0)); then
        for _ in $(seq 100); do
            [[ $(metric weir_tails_open) == "$TAILS" ]] && break
            sleep 0.1
        done
        [[ $(metric weir_tails_open) == "$TAILS" ]] || { echo "only $(metric weir_tails_open) of $TAILS tails opened" >&2; exit 1; }
    fi

    local gz=()
    [[ $LG_GZIP == 1 ]] && gz=(--gzip)
    [[ ${LG_ZSTD:-0} == 1 ]] && gz=(--zstd)
    [[ $listener == "protocol: http" ]] || gz=()
    "$BIN/weir-loadgen" --url "http://127.0.0.1:$port" --api-key bench-agent-key --connections "$conns" --protocol "$protocol" \
        --duration "$DURATION" --accepted-ids "$dir/accepted.ids" "${gz[@]}" >"$dir/loadgen.json" 2>"$dir/loadgen.err" &
    local lg=$!
    PIDS+=("$lg")

    sleep "$WARMUP"
    local t0 w0 l0 b0 m0 e0 r0 i0
    t0=$(now); w0=$(ticks "$weir"); l0=$(ticks "$lg"); b0=$(ticks "$bh"); m0=$(machine_busy)
    e0=$(bh_stat events); r0=$(metric weir_received_bytes_total); i0=$(metric weir_received_events_total)
    sleep "$WINDOW"
    local t1 w1 l1 b1 m1 e1 r1 i1
    t1=$(now); w1=$(ticks "$weir"); l1=$(ticks "$lg"); b1=$(ticks "$bh"); m1=$(machine_busy)
    e1=$(bh_stat events); r1=$(metric weir_received_bytes_total); i1=$(metric weir_received_events_total)

    wait "$lg" || { echo "loadgen failed:" >&2; cat "$dir/loadgen.err" >&2; exit 1; }
    local hwm rejected backend_retries backend_ms archive_mb=0
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$weir/status")
    rejected=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^weir_rejected_requests_total/ { n = $1; sub(/.*reason="/, "", n); sub(/".*/, "", n); c[n] += $2 } END { for (r in c) printf "%s=%d ", r, c[r] }')
    backend_retries=$(metric weir_backend_retries_total)
    # Mean time of one backend request (whole run): with max_in_flight it bounds what a route can carry.
    backend_ms=$(awk -v s="$(metric weir_backend_request_duration_seconds_sum %.6f)" -v c="$(metric weir_backend_request_duration_seconds_count)" 'BEGIN { printf "%.2f\n", c ? s / c * 1000 : 0 }')

    # Drain: SIGTERM makes weir send what it holds; then compare what came out with what was accepted,
    # request by request: losses and duplicates are counted apart.
    # Events the rules kept from the index on purpose (RULES=1): missing at the backend, not lost.
    local excluded
    excluded=$(metric weir_rule_excluded_events_total)
    # With the disk buffer, what intake took ahead of the backend is in the log, not lost:
    # let it drain (up to 2 minutes) before the stop, which would leave it there for the next start.
    local want
    want=$(jq -r .events_sent_accepted "$dir/loadgen.json")
    # The archive too: its feed may be behind the route (a shutdown leaves that backlog in the log).
    for _ in $(seq 240); do
        if (( $(bh_stat events) >= want - excluded )) \
            && [[ $archive == off || $(metric weir_archived_events_total) -ge $want ]]; then
            break
        fi
        sleep 0.5
    done
    kill -TERM "$weir"
    local weir_exit=0
    wait "$weir" || weir_exit=$?
    local delivered accepted batch
    delivered=$(bh_stat events)
    accepted=$(jq -r .events_sent_accepted "$dir/loadgen.json")
    batch=$(( accepted / $(jq -r '.accepted | if . == 0 then 1 else . end' "$dir/loadgen.json") ))
    curl -sf "http://$BH_ADDR/request-tags" >"$dir/backend.tags"
    local backend_check archive_check='{"lost":0,"dup":0,"stray":0}'
    backend_check=$(tag_check "$dir/accepted.ids" "$dir/backend.tags" "$batch")
    if ((!tagged)); then
        backend_check=$(count_check "$accepted" "$delivered")
    fi
    kill "$bh" 2>/dev/null || true
    wait "$bh" 2>/dev/null || true
    if [[ -d "$dir/archive" ]]; then
        archive_mb=$(du -sm "$dir/archive" | cut -f1)
        if ((tagged)); then
            { find "$dir/archive" -name '*.ndjson.gz' -print0 | xargs -0 -r zcat
              find "$dir/archive" -name '*.ndjson.zst' -print0 | xargs -0 -r zstdcat; } | grep -o 'weir_req:[0-9]*' \
                | cut -d: -f2 | sort | uniq -c | awk '{ print $2, $1 }' >"$dir/archive.tags"
            archive_check=$(tag_check "$dir/accepted.ids" "$dir/archive.tags" "$batch")
        else
            archive_check=$(count_check "$accepted" "$(zcat_count "$dir/archive")")
        fi
    fi
    local warnings
    warnings=$(grep -cE ' (WARN|ERROR) ' "$dir/weir.log" || true)

    jq -nc \
        --arg name "$name" --arg codec "$codec" --arg archive "$archive" --argjson conns "$conns" \
        --argjson dt "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        --argjson ev "$((e1 - e0))" --argjson iev "$((i1 - i0))" --argjson rb "$((r1 - r0))" \
        --argjson wt "$((w1 - w0))" --argjson lt "$((l1 - l0))" --argjson bt "$((b1 - b0))" --argjson ot "$((m1 - m0 - (w1 - w0) - (l1 - l0) - (b1 - b0)))" --argjson hz "$HZ" \
        --argjson hwm "$hwm" --argjson delivered "$delivered" --argjson accepted "$accepted" \
        --argjson retries "$backend_retries" --argjson backend_ms "$backend_ms" --argjson archive_mb "$archive_mb" --argjson warnings "$warnings" \
        --argjson weir_exit "$weir_exit" --argjson bcheck "$backend_check" --argjson acheck "$archive_check" --argjson excluded "$excluded" \
        --arg rejected "$rejected" --slurpfile lg "$dir/loadgen.json" \
        '{name: $name, codec: $codec, archive: $archive, connections: $conns, window_s: $dt,
          events_per_s: ($ev / $dt), intake_events_per_s: ($iev / $dt), mb_per_s_in: ($rb / $dt / 1e6),
          weir_cpu_pct: ($wt / $hz / $dt * 100), loadgen_cpu_pct: ($lt / $hz / $dt * 100), blackhole_cpu_pct: ($bt / $hz / $dt * 100), other_cpu_pct: ($ot / $hz / $dt * 100),
          weir_peak_rss_mb: ($hwm / 1024), loadgen: $lg[0], weir_rejections: $rejected, backend_retries: $retries, backend_request_ms: $backend_ms,
          accepted_events: $accepted, delivered_events: $delivered, weir_exit: $weir_exit,
          excluded_events: $excluded, lost_events: ($bcheck.lost - $excluded), duplicate_events: $bcheck.dup, unacknowledged_events: $bcheck.stray,
          archive_lost_events: (if $archive == "on" then $acheck.lost else null end),
          archive_duplicate_events: (if $archive == "on" then $acheck.dup else null end),
          archive_disk_mb: $archive_mb, weir_warnings: $warnings}' >>"$RESULTS"
    tail -1 "$RESULTS" >&2
    PIDS=()
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$dir/archive"
}

for s in $SCENARIOS; do
    IFS=: read -r name codec archive conns in_flight plugin buffer protocol <<<"$s"
    run_scenario "$name" "$codec" "$archive" "${conns:-}" "${in_flight:-}" "${plugin:-}" "${buffer:-}" "${protocol:-}"
done

echo
echo "weir end to end on $(nproc) cores, loadgen gzip=$LG_GZIP zstd=${LG_ZSTD:-0}, ${DURATION}s runs, measured over the last ${WINDOW}s; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
jq -rs '
  (["scenario", "conns", "events/s", "MB/s in", "weir CPU%", "peak RSS MB", "503s", "of reqs", "p99 ms", "backend ms", "lost", "dup", "archive lost", "archive dup", "exit", "loadgen CPU%", "blackhole CPU%", "other CPU%"] | @tsv),
  (.[] | [.name, .connections, (.events_per_s | round), (.mb_per_s_in * 10 | round / 10), (.weir_cpu_pct | round), (.weir_peak_rss_mb | round),
          .loadgen.rejected_503, .loadgen.requests, .loadgen.latency_p99_ms, .backend_request_ms, .lost_events, .duplicate_events,
          (.archive_lost_events // "-"), (.archive_duplicate_events // "-"), .weir_exit, (.loadgen_cpu_pct | round), (.blackhole_cpu_pct | round), (.other_cpu_pct | round)] | @tsv)
' "$RESULTS" | column -t -s $'\t'
echo
echo "weir refusals by reason (whole run):"
jq -r '"  \(.name): \(if .weir_rejections == "" then "none" else .weir_rejections end)  backend retries: \(.backend_retries)  weir warnings logged: \(.weir_warnings)"' "$RESULTS"
cp "$RESULTS" "${RESULTS_OUT:-/tmp/weir-bench-results.jsonl}"
echo "raw results: ${RESULTS_OUT:-/tmp/weir-bench-results.jsonl}"
# Loudly: a benchmark that lost or duplicated anything, or whose weir did not exit cleanly, failed.
bad=$(jq -rs '[.[] | select(.lost_events != 0 or .duplicate_events > 0 or .weir_exit != 0
                             or (.archive_lost_events // 0) > 0 or (.archive_duplicate_events // 0) > 0)
               | "\(.name): lost \(.lost_events), duplicated \(.duplicate_events), archive lost \(.archive_lost_events // "-"), archive duplicated \(.archive_duplicate_events // "-"), weir exit \(.weir_exit)"] | .[]' "$RESULTS")
if [[ -n $bad ]]; then
    echo "FAILED:" >&2
    echo "$bad" >&2
    exit 1
fi
