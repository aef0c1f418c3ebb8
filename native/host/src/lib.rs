//! flashcart's edge host: runs a Spin manifest's WebAssembly components on wasmtime.
//!
//! It reads the same `spin.toml` and runs the same `.wasm` files (spin-sdk 7, WASI 0.3
//! HTTP) as Spin 4 does, so a function that works on one works on the other. Parts:
//!
//! - [`manifest`]: Spin manifest v2, strict (unknown or unsupported keys are errors);
//! - [`routes`]: Spin's HTTP route matching (most specific route wins);
//! - [`template`], [`variables`], [`runtime_config`]: `{{ var }}` templates, Spin's
//!   variable providers (CLI, `SPIN_VARIABLE_*`, runtime config, default);
//! - [`outbound`]: where components may connect (`allowed_outbound_hosts`);
//! - [`runtime`]: the wasmtime engine (component-model async, pooling allocator,
//!   epoch deadlines, on-disk compiled-code cache) and loading components against
//!   the flashcart [`world`];
//! - [`spin`]: the host side of `spin:variables`, `spin:key-value` ([`key_value`]) and
//!   `spin:redis` ([`redis_pool`], one shared multiplexed client per address);
//! - [`app`]: a loaded application; [`instance`]: an instance's store data;
//!   [`handler`]: requests served on reused instances (Spin 4.1's model);
//! - [`server`]: hyper serving with graceful shutdown, health and metrics
//!   ([`telemetry`], [`problem`] for problem+json errors);
//! - [`build`]: `flashcart build`; [`bench`]: `flashcart bench cold-start`.
#![deny(missing_docs)]

pub mod app;
pub mod bench;
pub mod build;
pub mod handler;
pub mod instance;
pub mod key_value;
pub mod manifest;
pub mod outbound;
pub mod problem;
pub mod redis_pool;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod spin;
pub mod telemetry;
pub mod template;
pub mod variables;
pub mod world;

pub use app::{App, AppConfig, Connections};
pub use handler::Reuse;
pub use runtime::{Allocator, RuntimeConfig};
pub use server::{run, run_metrics};

/// Why the host could not start an application.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// The runtime config file is invalid.
    #[error(transparent)]
    RuntimeConfig(#[from] runtime_config::RuntimeConfigError),
    /// A variable could not be resolved.
    #[error(transparent)]
    Variable(#[from] variables::VariableError),
    /// The engine or a component failed to load.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The key-value store could not be opened.
    #[error("key-value store: {0}")]
    KeyValue(#[from] key_value::StoreError),
    /// A resolved setting is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Result of host operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
