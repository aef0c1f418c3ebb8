//! `flashcart up`: load a Spin manifest and serve it until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flashcart_host::variables::Providers;
use flashcart_host::{Allocator, App, AppConfig, Connections, Reuse, RuntimeConfig};
use flashcart_settlement::parse_duration as duration;

/// Arguments of `flashcart up` (in the spirit of `spin up`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The application manifest.
    #[arg(
        long = "from",
        short = 'f',
        default_value = "spin.toml",
        env = "FLASHCART_MANIFEST"
    )]
    manifest: PathBuf,
    /// Address to serve the application on.
    #[arg(long, default_value = "127.0.0.1:3000", env = "FLASHCART_LISTEN")]
    listen: SocketAddr,
    /// Runtime config file (key-value store, variable values).
    #[arg(long, env = "FLASHCART_RUNTIME_CONFIG_FILE")]
    runtime_config_file: Option<PathBuf>,
    /// Environment variable for every component, `KEY=VALUE` (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Application variable value, `name=value`; wins over every other provider (repeatable).
    #[arg(long = "variable", value_parser = key_value)]
    variables: Vec<(String, String)>,
    /// Directory of the compiled-code cache.
    #[arg(long, env = "FLASHCART_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every start instead of using the compiled-code cache.
    #[arg(long)]
    no_cache: bool,
    /// Instance allocator.
    #[arg(long, value_enum, default_value_t = AllocatorArg::Pooling)]
    allocator: AllocatorArg,
    /// Instances that may exist at once (the pool's size) and requests served at once.
    #[arg(long, default_value_t = 256, env = "FLASHCART_MAX_INSTANCES")]
    max_instances: u32,
    /// Requests one instance serves before it is dropped, as Spin 4.1 does; 1 gives every
    /// request a fresh instance (full isolation, slower).
    #[arg(long, default_value_t = 128, env = "FLASHCART_MAX_INSTANCE_REUSE")]
    max_instance_reuse: usize,
    /// Requests one instance serves at the same time (WASI 0.3 handlers are async).
    #[arg(long, default_value_t = 16, env = "FLASHCART_MAX_INSTANCE_CONCURRENCY")]
    max_instance_concurrency: usize,
    /// How long an idle instance is kept for the next request, e.g. `1s`.
    #[arg(long, default_value = "1s", value_parser = duration, env = "FLASHCART_IDLE_INSTANCE_TIMEOUT")]
    idle_instance_timeout: Duration,
    /// Time a client has to send a request header, e.g. `10s`; also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, default_value = "10s", value_parser = duration, env = "FLASHCART_HEADER_READ_TIMEOUT")]
    header_read_timeout: Duration,
    /// Time a client has to send a request body after its header, e.g. `10s` (408 after).
    #[arg(long, default_value = "10s", value_parser = duration, env = "FLASHCART_BODY_READ_TIMEOUT")]
    body_read_timeout: Duration,
    /// Open client connections at most (further clients wait in the listen backlog);
    /// capped below the process's open-files limit.
    #[arg(long, default_value_t = 10_000, env = "FLASHCART_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Largest linear memory an instance may grow to, in MiB.
    #[arg(long, default_value_t = 64, env = "FLASHCART_MAX_MEMORY_MB")]
    max_memory_mb: usize,
    /// A request's deadline with its unit, e.g. `10s` or `500ms`; a component past it is
    /// stopped (504).
    #[arg(long, default_value = "10s", value_parser = duration, env = "FLASHCART_REQUEST_TIMEOUT")]
    request_timeout: Duration,
    /// Largest request body in bytes; larger is answered 413.
    #[arg(long, default_value_t = 1 << 20, env = "FLASHCART_MAX_BODY_BYTES")]
    max_body_bytes: usize,
    /// Also serve Prometheus `/metrics` on this (operator-only) address.
    #[arg(long, env = "FLASHCART_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Do not run settlement in this process (run `flashcart settle` elsewhere).
    #[arg(long)]
    no_settle: bool,
    /// Settlement, run in this process unless `--no-settle`.
    #[command(flatten, next_help_heading = "Settlement")]
    settle: flashcart_settlement::Config,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AllocatorArg {
    Pooling,
    OnDemand,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".flashcart"));
    base.join("flashcart").join("compiled")
}

/// File descriptors kept for everything but client connections: Redis, the ledger, the
/// compiled-code cache, logs.
const RESERVED_FDS: u64 = 128;

/// `wanted` connections, or fewer when the open-files limit (raised to its hard limit
/// first) would not hold them: a full descriptor table makes `accept` fail for every
/// client, which is how slow clients used to lock buyers out.
fn connection_cap(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return wanted;
        }
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if room < wanted {
        eprintln!(
            "flashcart: at most {room} client connections (open-files limit {limit}; raise it \
             with `ulimit -n` for more)"
        );
    }
    wanted.min(room)
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut providers = Providers::from_process_env();
    providers.cli = args.variables.into_iter().collect();
    let cache_dir = if args.no_cache {
        None
    } else {
        Some(args.cache_dir.unwrap_or_else(default_cache_dir))
    };
    let config = AppConfig {
        manifest: args.manifest.clone(),
        runtime_config: args.runtime_config_file,
        providers,
        env: args.env,
        runtime: RuntimeConfig {
            allocator: match args.allocator {
                AllocatorArg::Pooling => Allocator::Pooling,
                AllocatorArg::OnDemand => Allocator::OnDemand,
            },
            cache_dir,
            max_instances: args.max_instances,
            max_memory_bytes: args.max_memory_mb << 20,
        },
        request_timeout: args.request_timeout,
        max_body_bytes: args.max_body_bytes,
        reuse: Reuse {
            max_requests: args.max_instance_reuse,
            max_concurrent: args.max_instance_concurrency,
            idle_timeout: args.idle_instance_timeout,
        },
        connections: Connections {
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_connections: connection_cap(args.max_connections),
        },
        components: None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async move {
        let app =
            App::load(&config).with_context(|| format!("loading {}", config.manifest.display()))?;
        let app = Arc::new(app);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let metrics = match args.metrics_listen {
            Some(address) => {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening for metrics on {address}"))?;
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(flashcart_host::run_metrics(
                    listener,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        // Settlement beside the edge, so the local system is complete with one command; it
        // finishes its current batch when the same signal stops the host.
        // A node whose settlement has stopped must not go on serving: its events would pile
        // up unsettled and a fenced partition would never be lifted. Settlement failing (e.g.
        // no Redis at its address) stops the host the way a signal does, and `up` exits with
        // settlement's error.
        let settlement_failed = Arc::new(tokio::sync::Notify::new());
        let settlement = (!args.no_settle).then(|| {
            let mut stop = stop_rx.clone();
            let failed = Arc::clone(&settlement_failed);
            eprintln!(
                "flashcart: settling the partition streams into the ledger ({})",
                args.settle.data_dir.display()
            );
            tokio::spawn(async move {
                let settled = flashcart_settlement::run(args.settle, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
                if let Err(e) = &settled {
                    eprintln!("flashcart: settlement stopped: {e:#}; stopping the node");
                    failed.notify_one();
                }
                settled
            })
        });
        eprintln!(
            "flashcart: serving {} on http://{}",
            app.name(),
            args.listen
        );
        let served = flashcart_host::run(app, listener, async move {
            tokio::select! {
                () = crate::shutdown::signal() => {}
                () = settlement_failed.notified() => {}
            }
            let _ = stop_tx.send(true);
        })
        .await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        if let Some(settlement) = settlement {
            settlement
                .await
                .context("settlement task")?
                .context("settlement")?;
        }
        served.context("serving")
    })
}
