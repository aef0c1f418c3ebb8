//! flashcart-host's integration tests: real components over real HTTP through the
//! same serving code as `flashcart up`, a private redis-server for Redis.
//!
//! The test components are built by `scripts/build-test-components.sh` (run by
//! `scripts/test.sh` before `cargo test`); see `support::wasm`.

mod components;
mod config_fuzz;
mod connections;
mod manifest_ui;
mod redis;
mod support;
