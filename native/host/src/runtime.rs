//! The wasmtime engine, the linker and loading components.
//!
//! One [`Runtime`] per host process: an engine with the component model's async ABI
//! (WASI 0.3), epoch interruption so a looping guest can be cut off, the pooling
//! allocator (or on-demand, for comparison) and wasmtime's on-disk compiled-code
//! cache. Each component is compiled once (or loaded from the cache), checked against
//! the flashcart world and pre-instantiated; a request then only creates a `Store`
//! and instantiates from the [`wasmtime::component::InstancePre`].
//!
//! The cache is wasmtime's own (`Config::cache`): entries are keyed by a SHA-256 of
//! the wasm bytes together with the engine's compilation settings and wasmtime's
//! version — the same key as the engine's precompile compatibility hash. We do not
//! write our own artifact files because loading a precompiled artifact is an `unsafe`
//! call in wasmtime (the bytes are trusted as machine code), and this workspace
//! forbids `unsafe`; wasmtime's cache performs that load behind a safe API with its
//! own integrity handling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::instance::RequestState;
use crate::world;

/// Why the engine could not be built or a component not loaded.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("wasmtime engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The compiled-code cache directory cannot be used.
    #[error("compiled-code cache at {path}: {message}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The `.wasm` file cannot be read.
    #[error("component `{component}`: cannot read {path}: {source}")]
    Read {
        /// Component id.
        component: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or compilation failed.
    #[error("component `{component}`: cannot compile {path}: {message}")]
    Compile {
        /// Component id.
        component: String,
        /// The file.
        path: PathBuf,
        /// wasmtime's message.
        message: String,
    },
    /// Imports something outside the flashcart world.
    #[error(
        "component `{component}` imports `{import}`, which is not in the flashcart world \
         (wit/flashcart.wit); a flashcart function may only import: {allowed}"
    )]
    ForbiddenImport {
        /// Component id.
        component: String,
        /// The import.
        import: String,
        /// The allowed list, for the message.
        allowed: String,
    },
    /// Does not export `wasi:http/handler@0.3`.
    #[error("component `{component}` is not a WASI 0.3 HTTP handler: {message}")]
    NotAHandler {
        /// Component id.
        component: String,
        /// wasmtime's message.
        message: String,
    },
}

/// Result of runtime operations.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How instances get their memories and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots reused across instances (fast instantiation).
    Pooling,
    /// mmap per instance (wasmtime's default).
    OnDemand,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instance allocation strategy.
    pub allocator: Allocator,
    /// Compiled-code cache directory; `None` compiles every start.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once (pool size; also the request concurrency cap).
    pub max_instances: u32,
    /// Largest linear memory an instance may grow to, in bytes.
    pub max_memory_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            allocator: Allocator::Pooling,
            cache_dir: None,
            max_instances: 256,
            max_memory_bytes: 64 << 20,
        }
    }
}

/// Bytes of each pooled linear memory kept resident between instances (a Rust component's
/// heap and stack live in its first few MiB).
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Address space reserved for each linear memory: all that a 32-bit index can reach.
const MEMORY_RESERVATION_BYTES: u64 = 4 << 30;

/// Unmapped address space after each reservation: a load or store whose constant offset
/// reaches past the reservation by up to this much traps here without a bounds check
/// (wasmtime's own default on 64-bit hosts).
const MEMORY_GUARD_BYTES: u64 = 32 << 20;

/// Slots whose memory is decommitted together (one TLB shootdown for the batch).
const DECOMMIT_BATCH: usize = 32;

/// The wasmtime this host is built on (what `flashcart bench cold-start` records beside its
/// figures; a test holds it to `Cargo.lock`).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// How often the epoch advances: the granularity of request deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine, its linker, and the thread that advances the epoch.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RequestState>,
    config: RuntimeConfig,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A loaded component, ready to instantiate.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The HTTP handler pre-instance.
    pub pre: ServicePre<RequestState>,
    /// How long compiling (or loading from cache) took.
    pub load_time: Duration,
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration or the cache directory is unusable.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.wasm_component_model_async(true);
        wasm.epoch_interruption(true);
        #[cfg(feature = "jit-profile")]
        if std::env::var_os("FLASHCART_PERF_MAP").is_some_and(|v| v == "1") {
            // For `perf report`: names for the guests' JIT-compiled functions, in
            // /tmp/perf-<pid>.map.
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| RuntimeError::Cache {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            // wasmtime's cache wants an absolute directory; operators give relative ones.
            let dir = std::path::absolute(dir).map_err(|e| RuntimeError::Cache {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(&dir);
            let cache = wasmtime::Cache::new(cache).map_err(|e| RuntimeError::Cache {
                path: dir.clone(),
                message: format!("{e:#}"),
            })?;
            wasm.cache(Some(cache));
        }
        // Linear memories are 32-bit: reserving the whole 4 GiB they can address, plus a
        // guard region past it, lets Cranelift leave out the bounds check of every load and
        // store (the guard catches what escapes). That is a tenth of a hello request's
        // instructions (docs/benchmarks.md). It costs address space, not memory: a pool of
        // 512 memories reserves ~2 TiB of the 128 TiB a process has. How far a memory may
        // actually grow is `max_memory_bytes`, enforced by the pool and by each store's
        // limiter (`instance::Limits`), which also holds it for the on-demand allocator.
        wasm.memory_reservation(MEMORY_RESERVATION_BYTES);
        wasm.memory_guard_size(MEMORY_GUARD_BYTES);
        if config.allocator == Allocator::Pooling {
            let mut pool = PoolingAllocationConfig::default();
            let n = config.max_instances;
            pool.total_component_instances(n);
            // A Rust wasm32-wasip2 component has a few core instances (the program and
            // small shim modules) but one memory and a couple of tables.
            pool.total_core_instances(n * 8);
            pool.max_core_instances_per_component(16);
            pool.total_memories(n * 2);
            pool.max_memories_per_component(2);
            pool.total_tables(n * 4);
            pool.max_tables_per_component(4);
            pool.max_memory_size(config.max_memory_bytes);
            pool.total_stacks(n);
            // Returning a slot to the pool must not cost a page fault per page on the next
            // instance, nor an madvise + TLB shootdown per instance on 2 cores: keep the
            // first MiBs of each memory resident and reset only the pages a guest dirtied
            // (PAGEMAP_SCAN where the kernel has it, memset otherwise), and batch the
            // decommits of the rest.
            pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
            pool.table_keep_resident(64 << 10);
            pool.pagemap_scan(wasmtime::Enabled::Auto);
            pool.decommit_batch_size(DECOMMIT_BATCH);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(RuntimeError::Engine)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::Engine)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(RuntimeError::Engine)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(RuntimeError::Engine)?;
        crate::spin::add_to_linker(&mut linker).map_err(RuntimeError::Engine)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("flashcart-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(wasmtime::Error::msg(e.to_string())))?
        };

        Ok(Self {
            engine,
            linker,
            config,
            ticker: Some(ticker),
            stop,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Compiles (or loads from the cache) the component at `path`, checks its imports
    /// against the flashcart world and pre-instantiates it.
    ///
    /// # Errors
    /// When the file is unreadable, not a component, imports something outside the
    /// flashcart world, or is not a WASI 0.3 HTTP handler.
    pub fn load(&self, id: &str, path: &Path) -> Result<LoadedComponent> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read {
            component: id.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let started = Instant::now();
        let component =
            Component::from_binary(&self.engine, &bytes).map_err(|e| RuntimeError::Compile {
                component: id.to_owned(),
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        let load_time = started.elapsed();

        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !world::allows_import(name) {
                return Err(RuntimeError::ForbiddenImport {
                    component: id.to_owned(),
                    import: name.to_owned(),
                    allowed: world::ALLOWED_IMPORTS.join(", "),
                });
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Compile {
                component: id.to_owned(),
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        let pre = ServicePre::new(pre).map_err(|e| RuntimeError::NotAHandler {
            component: id.to_owned(),
            message: format!("{e:#}"),
        })?;
        Ok(LoadedComponent { pre, load_time })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            // The ticker sleeps one tick at most; joining keeps threads from piling up
            // when tests build many runtimes.
            let _ = ticker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wasmtime_version_is_the_locked_one() {
        let lock = include_str!("../../../Cargo.lock");
        assert!(
            lock.contains(&format!(
                "name = \"wasmtime\"\nversion = \"{}\"",
                super::WASMTIME_VERSION
            )),
            "Cargo.lock locks another wasmtime than WASMTIME_VERSION ({})",
            super::WASMTIME_VERSION
        );
    }
}
