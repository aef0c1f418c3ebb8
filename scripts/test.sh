#!/usr/bin/env bash
# flashcart's whole test suite, on a fresh Debian machine with only Rust installed.
# Installs what is missing (wasm32-wasip2 target, redis-server, PostgreSQL, and the operators'
# tools the tests drive: promtool, headless Chromium, schemathesis, kubernetes-validate,
# check-jsonschema), then runs
# format and lint checks, a check without dev-dependencies, every test, and the wasm build
# of the domain core. Tests start their own private servers; nothing on default ports is used.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_wasm_target
ensure_redis
ensure_postgres
ensure_promtool
ensure_chromium
ensure_python_tools
setup_cargo_target

say "cargo fmt --check"
cargo fmt --all --check

# A check, not a build: without dev-dependencies some crates (sqlx, wasmtime-wasi, the host…)
# resolve other features than under `cargo test`, so a build here would compile them a second
# time in the same run; the check catches the same missing features without code generation.
say "check without dev-dependencies (catches features only tests turn on)"
cargo check --locked

say "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "domain core for wasm32-wasip2"
cargo build -p flashcart-core --target wasm32-wasip2 --locked

say "edge components for wasm32-wasip2 (release, into build/, as spin.toml expects)"
./scripts/build-component.sh flashcart-fn-stock-check flashcart-fn-deduct flashcart-fn-order-create \
    flashcart-fn-payment-callback flashcart-fn-admin
say "edge host test components (wasm32-wasip2; the host's tests load them)"
./scripts/build-test-components.sh

say "cargo test (real redis-server and PostgreSQL, started privately by the tests)"
cargo test --locked

say "all checks passed"
