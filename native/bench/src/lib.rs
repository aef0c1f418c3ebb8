//! flashcart-bench: `flashcart bench sale`, the benchmark users run to trust flashcart.
//!
//! It drives a flash sale over real HTTP — against edge nodes it starts itself (`flashcart
//! up`, a private `redis-server`, settlement into a temp ledger) or against any running
//! nodes (`--url`, e.g. real Spin) — closed and open loop, in a *sustained* regime (huge
//! stock) and a *drop* regime (many buyers, few units, past sell-out). In the same run it
//! measures baselines at the same load (a minimal deduct function and `fc_reserve` over
//! redis-rs, the `hello` component on flashcart's host and on `wasmtime serve`), and it
//! checks what must hold after any sale: nothing oversold, the books balance, and the
//! ledger agrees with Redis once settlement has drained.
//!
//! It also holds `flashcart bench cold-start` ([`cold_start`]): what starting each component
//! of `spin.toml` costs as deployed, recorded per build in a history keyed by the component's
//! digest.
//!
//! Parts:
//! - [`cold_start`]: the cold-start bench, its history and plot;
//! - [`sale`]: the options and [`sale::run`], which sets up, runs, checks and reports;
//! - [`driver`]: closed- and open-loop load over any [`driver::Target`] (latency from the
//!   intended send time in open loop, so no coordinated omission);
//! - [`http`]: the HTTP targets (one keep-alive hyper connection per virtual user);
//! - [`baseline`]: the redis-rs baselines;
//! - [`node`]: the processes the bench starts (`flashcart up`, `wasmtime serve`);
//! - [`checks`]: oversold, invariant, settlement drain and reconciliation;
//! - [`cpu`]: per-process CPU time from `/proc`;
//! - [`report`], [`plot`]: `sale.json`, the stdout table and `sale.svg`.
//!
//! Errors are `anyhow` with context: this is a harness whose every failure ends the run and
//! is read by a person, not matched on by a caller.
#![deny(missing_docs)]

pub mod baseline;
pub mod checks;
pub mod cold_start;
pub mod cpu;
pub mod driver;
pub mod http;
pub mod node;
pub mod plot;
pub mod report;
pub mod sale;
