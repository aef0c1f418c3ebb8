#!/usr/bin/env bash
# The fault suite, long: every fault scenario of docs/reliability.md at FLASHCART_FAULT_SCALE
# (default 10: ten times the crash kills and events, the fuzz cases and the racing payment
# deliveries of the CI run). `./scripts/test.sh` runs the same tests at scale 1.
#   ./scripts/faults.sh        # scale 10
#   ./scripts/faults.sh 3      # scale 3
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export FLASHCART_FAULT_SCALE="${1:-${FLASHCART_FAULT_SCALE:-10}}"
ensure_wasm_target
ensure_redis
ensure_postgres
setup_cargo_target

say "edge components and host test components (wasm32-wasip2)"
./scripts/build-component.sh flashcart-fn-stock-check flashcart-fn-deduct flashcart-fn-order-create \
    flashcart-fn-payment-callback flashcart-fn-admin
./scripts/build-test-components.sh

say "fault suite at scale $FLASHCART_FAULT_SCALE"
cargo test --locked --test settlement -- powercut crash callbacks timers
cargo test --locked --test contract -- hostile paused one_key_one_effect every_problem_type
cargo test --locked --test host -- connections config_fuzz
cargo test --locked --test cli -- crash crowd
say "fault suite passed at scale $FLASHCART_FAULT_SCALE"
