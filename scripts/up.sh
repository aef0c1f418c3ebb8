#!/usr/bin/env bash
# Runs flashcart locally: installs what is missing, builds the components listed in
# spin.toml (`flashcart build`), starts a private redis-server (never on 6379; data in
# .flashcart/, gitignored) and serves spin.toml on http://127.0.0.1:3000 with flashcart's
# own host, with settlement in the same process (ledger: .flashcart/ledger.sqlite).
# Ctrl-C stops the host gracefully (settlement finishes its batch), then Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_wasm_target
ensure_redis
setup_cargo_target

say "building the flashcart command (with the workspace's default members, as the tests build them)"
# Not `-p flashcart-cli`: a single-package build unifies features differently and would
# build wasmtime and the rest a second time next to what ./scripts/test.sh built.
cargo build --locked
flashcart="$CARGO_TARGET_DIR/debug/flashcart"

say "building the components (flashcart build)"
"$flashcart" build --from spin.toml

mkdir -p .flashcart/redis .flashcart/cache
port="${FLASHCART_REDIS_PORT:-6380}"
while (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    say "port $port is taken; trying $((port + 1))"
    port=$((port + 1))
done

say "starting a private redis-server on 127.0.0.1:$port (data in .flashcart/redis)"
# flashcart's Redis settings (AOF on, noeviction): the data survives a restart, like the ledger.
redis-server infra/redis/flashcart.conf --port "$port" --bind 127.0.0.1 --dir "$PWD/.flashcart/redis" \
    --save '' --logfile "$PWD/.flashcart/redis/redis.log" &
redis_pid=$!
stop_redis() {
    if kill -0 "$redis_pid" 2>/dev/null; then
        say "stopping redis-server"
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
}
trap stop_redis EXIT
for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
    sleep 0.05
done
redis-cli -p "$port" ping >/dev/null

# Local development secrets (override them in the environment); printed so curl can use them.
export SPIN_VARIABLE_ADMIN_TOKEN="${SPIN_VARIABLE_ADMIN_TOKEN:-dev-admin-token}"
export SPIN_VARIABLE_PSP_SIGNING_SECRETS="${SPIN_VARIABLE_PSP_SIGNING_SECRETS:-whsec_dev}"
say "admin token: $SPIN_VARIABLE_ADMIN_TOKEN; payment signing secret: ${SPIN_VARIABLE_PSP_SIGNING_SECRETS%%,*}"

runtime_config=(--runtime-config-file infra/spin/runtime-config.toml)

say "serving spin.toml on http://127.0.0.1:3000 (Ctrl-C stops)"
# In the foreground, so Ctrl-C reaches the host, which drains and exits; the EXIT trap
# then stops Redis.
SPIN_VARIABLE_REDIS_ADDRESS="127.0.0.1:$port" "$flashcart" up --from spin.toml \
    --listen 127.0.0.1:3000 --cache-dir .flashcart/cache "${runtime_config[@]}" \
    --redis-url "redis://127.0.0.1:$port" --data-dir .flashcart || status=$?
exit "${status:-0}"
