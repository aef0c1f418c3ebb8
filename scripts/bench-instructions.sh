#!/usr/bin/env bash
# Instructions per request, counted by callgrind: what one request costs a `flashcart up` node
# in user-space instructions (host, wasmtime and the guest's JIT code; not the kernel), for
#   hello     GET /hello on the hello test component (the host's own cost),
#   sold-out  a deduct answered 409 from the node's sold-out flag (no Redis call),
#   stock     a stock check answered from the edge cache,
#   deduct    a deduct that reserves (a new buyer and key each, one FCALL; Redis's own work is
#             not counted, only the node's).
# and, when a `wasmtime` binary is given (WASMTIME=) or on PATH,
#   wasmtime  GET / on the same hello component under `wasmtime serve` (the issue's baseline
#             for the host; counted the same way, one process under callgrind).
# Unlike req/s or CPU time, the count does not move with what else runs on the machine (two
# runs of the same binary agree to ~0.1 %), so it can compare two builds on a shared 2-core
# machine, run after run:
#   FLASHCART=/path/to/other/flashcart ./scripts/bench-instructions.sh   # another host build
#   COMPONENTS=/path/to/other/build ./scripts/bench-instructions.sh      # other component builds
#   REQUESTS=500 ./scripts/bench-instructions.sh                         # per kind (default 500)
#   KINDS="hello deduct" ./scripts/bench-instructions.sh                  # some kinds only
#   UP_ARGS="--max-memory-mb 128" ./scripts/bench-instructions.sh         # node settings
#   WASMTIME_ARGS="-W epoch-interruption=y" ./scripts/bench-instructions.sh  # wasmtime serve's
# The node runs with --max-instances 6 (MAX_INSTANCES=): each pooled memory reserves 4 GiB of
# address space, and valgrind does not hand out the ~2 TiB that the default 256 instances take.
# Run it alone: the edge cache re-reads what it remembers by the clock (every 250 ms), so a
# run slowed by other work counts a little more of that per request.
# Needs valgrind (apt-get install valgrind), the components built into build/ and the hello
# test component (./scripts/test.sh builds all of them); builds nothing. The node starts under
# callgrind (minutes, more when a component is not in the compiled-code cache yet), gets a
# warm-up of each kind, then for each kind the counters are zeroed, REQUESTS requests are
# sent on one keep-alive connection, and the counters are dumped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
setup_cargo_target
flashcart=${FLASHCART:-$CARGO_TARGET_DIR/debug/flashcart}
hello="$CARGO_TARGET_DIR/wasm32-wasip2/release/fc_test_hello.wasm"
components=${COMPONENTS:-$PWD/build}
requests=${REQUESTS:-500}
kinds=${KINDS-hello sold-out stock deduct}
for need in "$flashcart" "$hello" "$components/flashcart_fn_deduct.wasm"; do
    [ -e "$need" ] || { echo "missing $need: run ./scripts/test.sh (or cargo build and the component builds) first" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d -t flashcart-instructions-XXXX)

free_port() {
    local port=$((20000 + RANDOM % 20000))
    while (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
redis_pid=$!
node_pid=
wasmtime_pid=
stop() {
    # However each ended: a non-zero exit here must not leave Redis behind.
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    if [ -n "$wasmtime_pid" ]; then kill -INT "$wasmtime_pid" 2>/dev/null || true; wait "$wasmtime_pid" 2>/dev/null || true; fi
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
}
trap stop EXIT

# spin.toml as it is, its sources made absolute, plus a /hello route to the test component.
sed "s#^source = \"build/#source = \"$components/#" spin.toml >"$work/spin.toml"
printf '\n[[trigger.http]]\nroute = "/hello"\ncomponent = "hello"\n\n[component.hello]\nsource = "%s"\n' \
    "$hello" >>"$work/spin.toml"

port=$(free_port)
say "starting $flashcart under callgrind on 127.0.0.1:$port (takes minutes)"
SPIN_VARIABLE_REDIS_ADDRESS="127.0.0.1:$redis_port" SPIN_VARIABLE_ADMIN_TOKEN=bench \
    SPIN_VARIABLE_PSP_SIGNING_SECRETS=whsec_bench SPIN_VARIABLE_BUYER_RATE_PER_SECOND=0 \
    FLASHCART_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
    "$flashcart" up --from "$work/spin.toml" --listen "127.0.0.1:$port" --no-settle \
    --max-instances "${MAX_INSTANCES:-6}" ${UP_ARGS:-} \
    >"$work/node.log" 2>&1 &
node_pid=$!
wait_serving() { # wait_serving PID URL LOG
    for _ in $(seq 1 600); do
        curl -s -m 10 -o /dev/null "$2" && return
        kill -0 "$1" 2>/dev/null || { cat "$3" >&2; exit 1; }
        sleep 1
    done
    echo "$2 did not answer within 10 minutes" >&2
    exit 1
}
wait_serving "$node_pid" "http://127.0.0.1:$port/hello" "$work/node.log"

# One SKU sold out at the node (1 unit, taken), one with stock for the stock checks, one with
# more units than the deducts take.
now=$(($(date +%s%3N) - 1000))
load() {
    curl -sf -o /dev/null -X PUT -H 'authorization: Bearer bench' -H 'content-type: application/json' \
        "http://127.0.0.1:$port/v1/admin/skus/$1" \
        -d "{\"stock\":$2,\"segments\":1,\"price\":1999,\"currency\":\"EUR\",\"sale_start\":$now,\"sale_end\":$((now + 3600000)),\"per_buyer_limit\":2}"
}
load bench-sold 1
load bench-stock 1000000
load bench-deduct 100000000

send() { # send KIND N TAG [PORT]: N requests on one keep-alive connection; fails on an unexpected status
    python3 - "${4:-$port}" "$1" "$2" "$3" <<'EOF'
import http.client, json, sys
port, kind, n, tag = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
want = {"hello": {200}, "wasmtime": {200}, "sold-out": {201, 409}, "stock": {200}, "deduct": {201}}[kind]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
for i in range(n):
    if kind == "hello":
        c.request("GET", "/hello")
    elif kind == "wasmtime":
        c.request("GET", "/")
    elif kind == "stock":
        c.request("GET", "/v1/stock/bench-stock")
    else:
        sku = "bench-deduct" if kind == "deduct" else "bench-sold"
        c.request("POST", f"/v1/stock/{sku}/reservations",
                  body=json.dumps({"buyer_id": f"b{tag}-{i}", "quantity": 1}),
                  headers={"content-type": "application/json", "idempotency-key": f"k{tag}-{i}"})
    r = c.getresponse()
    r.read()
    if r.status not in want:
        sys.exit(f"{kind}: answer {r.status}")
EOF
}

count() { # count PID KIND [PORT]: zero PID's counters, send the requests, print the row
    callgrind_control -z "$1" >/dev/null 2>&1
    send "$2" "$requests" "$2-$RANDOM" "${3:-}"
    callgrind_control -d "$1" >/dev/null 2>&1
    local dump total
    dump=$(ls -t "$work"/callgrind."$1".* | head -1)
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%-9s %9d %14d %12d\n' "$2" "$requests" "$total" $((total / requests))
}

for kind in $kinds; do send "$kind" 50 "warm-$kind"; done
printf '%-9s %9s %14s %12s\n' kind requests instructions per-request
for kind in $kinds; do count "$node_pid" "$kind"; done

wasmtime=${WASMTIME:-$(command -v wasmtime || true)}
if [ -n "$wasmtime" ]; then
    # The node's exit status does not matter here (its counts are already dumped).
    kill "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
    node_pid=
    wasmtime_port=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
        "$wasmtime" serve -Scli -Sp3 -Wcomponent-model-async=y ${WASMTIME_ARGS:-} \
        --addr="127.0.0.1:$wasmtime_port" \
        "$hello" >"$work/wasmtime.log" 2>&1 &
    wasmtime_pid=$!
    wait_serving "$wasmtime_pid" "http://127.0.0.1:$wasmtime_port/" "$work/wasmtime.log"
    send wasmtime 50 warm "$wasmtime_port"
    count "$wasmtime_pid" wasmtime "$wasmtime_port"
else
    say "no wasmtime on PATH (WASMTIME= to name one): the wasmtime serve row is left out"
fi
say "callgrind dumps in $work (callgrind_annotate --auto=no <dump> for where they went)"
