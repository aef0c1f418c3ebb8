#!/usr/bin/env bash
# What `durability = replicated` costs: `flashcart bench sale` (sustained regime) against a
# `flashcart up` node on a Redis master WITH a replica, once per profile, RUNS times each,
# alternating profiles so both see the same machine. Both profiles run on the same
# master + replica, so the only difference is the WAIT after each write.
#   ./scripts/bench-durability.sh                 # 3 runs per profile, c=16, 5 s
#   RUNS=5 CONCURRENCY=16,64 DURATION=10s ./scripts/bench-durability.sh
# Needs the components and `flashcart` built (see docs/benchmarks.md); builds nothing.
# Results: one directory per run under $OUT (sale.json, sale.svg, logs), and the tables on
# stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
setup_cargo_target
flashcart="$CARGO_TARGET_DIR/debug/flashcart"
[ -x "$flashcart" ] || { echo "build flashcart first (cargo build)" >&2; exit 1; }
runs=${RUNS:-3}
concurrency=${CONCURRENCY:-16}
duration=${DURATION:-5s}
wait_ms=${DURABILITY_WAIT_MS:-100}
out=${OUT:-$(mktemp -d -t flashcart-durability-XXXX)}
mkdir -p "$out"

free_port() {
    local port=$((20000 + RANDOM % 20000))
    while (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start_redis() { # port dir [replicaof-port]
    mkdir -p "$2"
    local extra=()
    [ -n "${3:-}" ] && extra=(--replicaof 127.0.0.1 "$3")
    redis-server infra/redis/flashcart.conf --port "$1" --bind 127.0.0.1 --dir "$2" --save '' \
        --logfile "$2/redis.log" --repl-diskless-sync-delay 0 "${extra[@]}" &
    pids+=($!)
    until redis-cli -p "$1" ping >/dev/null 2>&1; do sleep 0.05; done
}

run_profile() { # profile run
    local dir="$out/$1-$2" master replica listen
    master=$(free_port); start_redis "$master" "$dir/master"
    replica=$(free_port); start_redis "$replica" "$dir/replica" "$master"
    until redis-cli -p "$replica" info replication | grep -q 'master_link_status:up'; do sleep 0.05; done
    listen=$(free_port)
    export SPIN_VARIABLE_ADMIN_TOKEN=bench-admin-token SPIN_VARIABLE_PSP_SIGNING_SECRETS=whsec_bench
    FLASHCART_LOG=warn "$flashcart" up --from spin.toml --listen "127.0.0.1:$listen" \
        --variable "redis_address=127.0.0.1:$master" --variable "durability=$1" \
        --variable "durability_wait_ms=$wait_ms" --redis-url "redis://127.0.0.1:$master" \
        --data-dir "$dir/node" >"$dir/node.log" 2>&1 &
    local node=$!
    pids+=($node)
    until curl -sf "http://127.0.0.1:$listen/.well-known/flashcart/health" >/dev/null; do sleep 0.1; done
    echo "== durability=$1 run $2 (master :$master, replica :$replica, node :$listen)"
    "$flashcart" bench sale --url "http://127.0.0.1:$listen" --admin-token bench-admin-token \
        --redis-url "redis://127.0.0.1:$master" --ledger-url "$dir/node/ledger.sqlite" \
        --regime sustained --no-baselines --concurrency "$concurrency" --rate 0 \
        --duration "$duration" --out "$dir/bench"
    kill "$node"; wait "$node" 2>/dev/null || true
    redis-cli -p "$replica" shutdown nosave >/dev/null 2>&1 || true
    redis-cli -p "$master" shutdown nosave >/dev/null 2>&1 || true
}

for run in $(seq 1 "$runs"); do
    run_profile local "$run"
    run_profile replicated "$run"
done
echo "results in $out"
