#!/usr/bin/env bash
# Measures fleet mode's quota overshoot with the real binaries: N weir (release) behind
# HAProxy sharing one redis-server, weir-loadgen flooding one tenant through HAProxy past
# its daily quota Q; prints what the fleet indexed (the sum of each instance's own usage
# from GET /admin/quotas) against Q and the stated bound Q + (N-1) x A. KILL_REDIS=S kills
# Redis S seconds into the flood (the instances go on under on_unavailable: local) and
# starts it again (empty) at the end, before the count.
#   N=3 Q=1000000 A=10000 SYNC=1s DURATION=15 CONNECTIONS=12 KILL_REDIS= WEIR=path
# Needs target/peers (tests/run.sh unpacks haproxy and redis-server), curl, jq.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${N:-3} Q=${Q:-1000000} A=${A:-10000} SYNC=${SYNC:-1s} DURATION=${DURATION:-15}
WEIR=${WEIR:-$ROOT/target/release/weir}
LOADGEN=$ROOT/target/release/weir-loadgen
REDIS=${WEIR_REDIS_SERVER:-$ROOT/target/peers/redis/usr/bin/redis-server}
HAPROXY=${WEIR_HAPROXY:-$ROOT/target/peers/haproxy/usr/sbin/haproxy}
WORK=$(mktemp -d)
PIDS=()
trap '{ kill -9 "${PIDS[@]}"; wait; } 2>/dev/null; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RPORT=$(free_port)
start_redis() {
    "$REDIS" --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >>"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    sleep 0.3
}
start_redis

servers=""
ADMINS=()
for i in $(seq "$N"); do
    port=$(free_port) admin=$(free_port)
    ADMINS+=("$admin")
    mkdir -p "$WORK/w$i"
    cat >"$WORK/w$i/weir.yaml" <<YAML
data_dir: $WORK/w$i/data
listeners: [{name: intake, address: "127.0.0.1:$port", protocol: http}]
admin: {address: "127.0.0.1:$admin", token: t}
log: {level: warn}
archive: {enabled: false, store: {type: local, root: $WORK/w$i/archive}}
buffer: {type: memory}
backends: [{name: sink, type: file, path: /dev/null}]
tenants:
  - name: bench
    api_keys: [bench-agent-key]
    backend: sink
    daily_quota: {max_events: $Q}
fleet:
  redis: {url: "redis://127.0.0.1:$RPORT/"}
  instance_id: w$i
  sync_interval: $SYNC
  max_unsynced_events: $A
  expected_instances: $N
YAML
    "$WEIR" run --config "$WORK/w$i/weir.yaml" >"$WORK/w$i/log" 2>&1 &
    PIDS+=($!)
    servers+="    server w$i 127.0.0.1:$port check port $admin"$'\n'
done
FE=$(free_port)
cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend intake
    bind 127.0.0.1:$FE
    default_backend weir
backend weir
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 300ms fall 2 rise 1
$servers
CFG
"$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
for admin in "${ADMINS[@]}"; do
    for _ in $(seq 100); do
        [[ $(curl -sf "http://127.0.0.1:$admin/readyz" | jq -r .fleet.instances 2>/dev/null) == "$N" ]] && break
        sleep 0.1
    done
done
sleep 1

"$LOADGEN" --url "http://127.0.0.1:$FE" --api-key bench-agent-key --connections "${CONNECTIONS:-12}" \
    --duration "$DURATION" >"$WORK/loadgen.json" 2>"$WORK/loadgen.err" &
LG=$!
if [[ -n ${KILL_REDIS:-} ]]; then
    sleep "$KILL_REDIS"
    kill -9 "$REDIS_PID"
    echo "redis killed at ${KILL_REDIS}s" >&2
fi
wait "$LG"
if [[ -n ${KILL_REDIS:-} ]]; then
    start_redis
    sleep 3
fi
sleep 2
indexed=0
for admin in "${ADMINS[@]}"; do
    own=$(curl -sf -H 'Authorization: Bearer t' "http://127.0.0.1:$admin/admin/quotas" | jq '.quotas[0].usage[""].events // 0')
    fleet=$(curl -sf -H 'Authorization: Bearer t' "http://127.0.0.1:$admin/admin/quotas" | jq -c '.quotas[0].fleet')
    echo "instance on admin port $admin: own $own, fleet view $fleet" >&2
    indexed=$((indexed + own))
done
sent=$(jq -r .events_sent_accepted "$WORK/loadgen.json")
bound=$((Q + (N - 1) * A))
jq -n --argjson n "$N" --argjson q "$Q" --argjson a "$A" --argjson accepted "$sent" --argjson indexed "$indexed" \
    --argjson bound "$bound" --arg kill "${KILL_REDIS:-}" \
    '{instances: $n, quota: $q, max_unsynced_events: $a, accepted: $accepted, indexed: $indexed, overshoot: ($indexed - $q), stated_bound: $bound, redis_killed_at_s: $kill, within: ($indexed >= $q and $indexed <= $bound)}'
