#!/usr/bin/env bash
# Builds one edge component for wasm32-wasip2 (release) and copies it to build/, where
# spin.toml's `source` points. Used as the component's [build] command by `spin build` and
# `flashcart build`; the cargo target dir may live outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
crate="$1"
target="${CARGO_TARGET_DIR:-$HOME/.cache/flashcart/target}"
cargo build --quiet --locked --release --target wasm32-wasip2 -p "$crate" --target-dir "$target"
mkdir -p build
cp "$target/wasm32-wasip2/release/${crate//-/_}.wasm" "build/${crate//-/_}.wasm"
