#!/usr/bin/env bash
# Builds flashcart-host's test components (spin-sdk 7, wasm32-wasip2, release) into
# $CARGO_TARGET_DIR/wasm32-wasip2/release/, where the host's tests look for them.
# They have their own workspace (native/host/test-components) because they only build
# for wasm; scripts/test.sh runs this before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_wasm_target
setup_cargo_target
say "building the host's test components for wasm32-wasip2"
cargo build --locked --release --target wasm32-wasip2 \
    --manifest-path native/host/test-components/Cargo.toml
