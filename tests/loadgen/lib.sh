# What the benchmark scripts share (sourced): a work directory $WORK removed at exit
# (KEEP=1 keeps it), the processes they start ($PIDS, killed at exit), free ports.
# Call with the directory name's prefix: `start_work weir-bench`.
start_work() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap cleanup EXIT
}

cleanup() {
    # Only the processes this script started, by pid.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}

free_port() {
    local p
    while :; do
        p=$((RANDOM % 30000 + 20000))
        ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}
