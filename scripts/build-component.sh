#!/usr/bin/env bash
# Builds edge components for wasm32-wasip2 (release, one cargo invocation) and copies them to
# build/, where spin.toml's `source` points. Used as each component's [build] command by
# `spin build` and `flashcart build`, and by scripts/test.sh for all five at once; the cargo
# target dir may live outside the repo.
#   scripts/build-component.sh flashcart-fn-deduct [flashcart-fn-admin …]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 CRATE..." >&2; exit 2; }
target="${CARGO_TARGET_DIR:-$HOME/.cache/flashcart/target}"
packages=()
for crate in "$@"; do packages+=(-p "$crate"); done
cargo build --quiet --locked --release --target wasm32-wasip2 "${packages[@]}" --target-dir "$target"
mkdir -p build
for crate in "$@"; do
    cp "$target/wasm32-wasip2/release/${crate//-/_}.wasm" "build/${crate//-/_}.wasm"
done
