//! flashcart-settlement: turns the events the edge decided (one Redis stream per partition)
//! into a durable SQL ledger, exactly once in effect, and runs the compensation timers.
//!
//! Parts:
//! - [`entry`]: stream entries, their ids and identities (the events they carry are the
//!   core's, [`flashcart_core::event`]).
//! - [`ledger`]: the SQL ledger (SQLite by default, PostgreSQL for `postgres://` URLs), its
//!   migrations and the idempotent batch apply.
//! - [`consumer`]: the consumer group worker — read, apply in one transaction, acknowledge;
//!   claim what dead consumers left, retry with backoff, dead-letter, trim.
//! - [`dlq`]: list, retry and drop dead-lettered entries.
//! - [`timers`]: reservation expiry, payment deadlines and refund requests, through the core.
//! - [`reconcile`]: Redis levels and records against the ledger, per SKU; careful repair.
//! - [`recovery`]: guards the partitions it settles, and after a Redis restart lifts their
//!   fence — restoring Redis from the ledger first when Redis lost writes the ledger has.
//! - [`metrics`]: counters, gauges and histograms through the `metrics` crate, in the
//!   process's registry (shared with the host in `flashcart up`) or one of their own; served
//!   with `/health` by `flashcart_telemetry::serve`.
//! - [`cli`]: the `reconcile` and `dlq` commands, ready for the `flashcart` CLI to embed.
//! - [`run`]: the service loop the `flashcart settle` command (and the `flashcart-settle`
//!   binary) runs until shutdown.
#![deny(missing_docs)]

pub mod cli;
pub mod consumer;
pub mod dlq;
pub mod entry;
pub mod ledger;
pub mod metrics;
pub mod reconcile;
pub mod recovery;
mod reply;
pub mod timers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flashcart_core::keys::KeySchema;

pub use consumer::{Consumer, ConsumerConfig, Recovered, Step};
pub use ledger::{Backend, Ledger, LedgerError};
pub use metrics::Metrics;
pub use reply::ReplyError;

/// Errors of settlement's library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed (classify with the client's predicates: `is_timeout`,
    /// `is_connection_dropped`, …).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Redis answered in a shape settlement does not understand.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// A bad argument (e.g. a dead-letter id that does not parse).
    #[error("{0}")]
    Invalid(String),
    /// An inventory function answered with a rejection settlement cannot handle (mostly
    /// "unavailable": Redis failed under it).
    #[error("inventory: {0}")]
    Inventory(flashcart_core::Rejection),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Ledger(LedgerError::Storage(e))
    }
}

/// Settlement's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a duration the one way every flashcart flag does (`humantime`): `250ms`, `10s`,
/// `2m`, `1h 30m`. A bare number is refused: `500` could mean milliseconds or seconds.
///
/// # Errors
/// When the text is not a duration with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("not a duration: {text:?} ({e}; e.g. 500ms, 10s, 2m)"))
}

fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("settle-{host}")
}

/// Everything `flashcart settle` takes. Flags are what operators set; each has an
/// environment variable.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Redis holding the partition streams.
    #[arg(
        long,
        env = "FLASHCART_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Redis Cluster nodes, `host:port` or `redis://host:port` (repeat, or comma-separated);
    /// when given, used instead of `--redis-url`.
    #[arg(
        long = "redis-cluster",
        env = "FLASHCART_REDIS_CLUSTER",
        value_delimiter = ','
    )]
    pub redis_cluster: Vec<String>,
    /// The ledger: `postgres://…`, `sqlite://PATH` or a file path. Default:
    /// `<data-dir>/ledger.sqlite`.
    #[arg(long, env = "FLASHCART_LEDGER_URL")]
    pub ledger_url: Option<String>,
    /// Directory for the default SQLite ledger.
    #[arg(long, env = "FLASHCART_DATA_DIR", default_value = ".flashcart")]
    pub data_dir: PathBuf,
    /// Partition count; must match the one the edge uses.
    #[arg(long, env = "FLASHCART_PARTITIONS", default_value_t = u32::from(KeySchema::DEFAULT_PARTITIONS))]
    pub partitions: u32,
    /// Consumer group shared by every settlement process.
    #[arg(long, env = "FLASHCART_SETTLE_GROUP", default_value = "settlement")]
    pub group: String,
    /// This process's consumer name: unique per live process, stable across its restarts.
    /// Default `settle-<hostname>`.
    #[arg(long, env = "FLASHCART_SETTLE_CONSUMER")]
    pub consumer: Option<String>,
    /// Most events applied in one SQL transaction.
    #[arg(long, env = "FLASHCART_SETTLE_BATCH", default_value_t = 1000)]
    pub batch_size: usize,
    /// Idle time after which another process claims a consumer's unacknowledged entries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub claim_idle: Duration,
    /// Failures after which an event goes to the dead-letter stream.
    #[arg(long, default_value_t = 5)]
    pub max_failures: u32,
    /// First retry delay after a failure; doubles each time.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// How long to wait after finding nothing to read.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub idle_wait: Duration,
    /// How often to claim, retry, trim and refresh gauges.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub maintain_every: Duration,
    /// Do not run the expiry/deadline timers and refund requests in this process.
    #[arg(long)]
    pub no_timers: bool,
    /// Most reservations (and orders) a timer pass handles per partition.
    #[arg(long, default_value_t = 500)]
    pub timer_batch: usize,
    /// Serve `/metrics` and `/health` here (e.g. 127.0.0.1:9187). Inside `flashcart up` the
    /// metrics are the whole process's, the host's included.
    #[arg(long, env = "FLASHCART_SETTLE_METRICS")]
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics this run records into; `None` (what the commands use) records into the
    /// process's registry. An embedder running several settlements in one process (the
    /// tests) gives each its own ([`Metrics::default`]) to tell them apart.
    #[arg(skip)]
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Config {
    // By hand: URLs may carry passwords, which must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &redact(&self.redis_url))
            .field(
                "redis_cluster",
                &self
                    .redis_cluster
                    .iter()
                    .map(|n| redact(n))
                    .collect::<Vec<_>>(),
            )
            .field("ledger_url", &self.ledger_url.as_deref().map(redact))
            .field("data_dir", &self.data_dir)
            .field("partitions", &self.partitions)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("batch_size", &self.batch_size)
            .field("claim_idle", &self.claim_idle)
            .field("max_failures", &self.max_failures)
            .field("retry_base", &self.retry_base)
            .field("idle_wait", &self.idle_wait)
            .field("maintain_every", &self.maintain_every)
            .field("no_timers", &self.no_timers)
            .field("timer_batch", &self.timer_batch)
            .field("metrics_addr", &self.metrics_addr)
            .field(
                "metrics",
                &if self.metrics.is_some() {
                    "own"
                } else {
                    "process"
                },
            )
            .finish()
    }
}

impl Config {
    /// A configuration with every default, for `redis_url` and `ledger_url`.
    pub fn new(redis_url: &str, ledger_url: &str) -> Self {
        Self {
            redis_url: redis_url.to_owned(),
            redis_cluster: Vec::new(),
            ledger_url: Some(ledger_url.to_owned()),
            data_dir: PathBuf::from(".flashcart"),
            partitions: u32::from(KeySchema::DEFAULT_PARTITIONS),
            group: "settlement".to_owned(),
            consumer: None,
            batch_size: 1000,
            claim_idle: Duration::from_secs(10),
            max_failures: 5,
            retry_base: Duration::from_secs(1),
            idle_wait: Duration::from_millis(50),
            maintain_every: Duration::from_secs(1),
            no_timers: false,
            timer_batch: 500,
            metrics_addr: None,
            metrics: None,
        }
    }

    /// The ledger URL in effect.
    pub fn ledger_url(&self) -> String {
        match &self.ledger_url {
            Some(url) => url.clone(),
            None => self.data_dir.join("ledger.sqlite").display().to_string(),
        }
    }

    /// The key schema.
    ///
    /// # Errors
    /// When the partition count is out of range.
    pub fn schema(&self) -> anyhow::Result<KeySchema> {
        KeySchema::new(self.partitions).context("--partitions")
    }

    /// The consumer settings.
    pub fn consumer_config(&self) -> ConsumerConfig {
        let config = ConsumerConfig {
            group: self.group.clone(),
            consumer: self.consumer.clone().unwrap_or_else(default_consumer),
            batch_size: self.batch_size.max(1),
            claim_idle: self.claim_idle,
            max_failures: self.max_failures.max(1),
            retry_base: self.retry_base,
            after_commit: None,
        };
        if config.patience() <= config.claim_idle {
            tracing::warn!(
                patience = ?config.patience(),
                claim_idle = ?config.claim_idle,
                "an event waiting for an earlier one held by a dead consumer would be dead-lettered \
                 before that one is claimed: raise --retry-base or --max-failures, or lower --claim-idle"
            );
        }
        config
    }

    /// Opens the ledger (creating the data dir for the default SQLite file).
    ///
    /// # Errors
    /// When the directory or the database cannot be opened.
    pub async fn open_ledger(&self) -> anyhow::Result<Ledger> {
        if self.ledger_url.is_none() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("creating data dir {}", self.data_dir.display()))?;
        }
        let url = self.ledger_url();
        Ledger::open(&url)
            .await
            .with_context(|| format!("opening the ledger at {}", redact(&url)))
    }

    /// Connects the core's inventory client (loading the function library if missing).
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the library.
    pub async fn open_inventory(&self) -> anyhow::Result<flashcart_inventory::NativeInventory> {
        let target = self.target();
        flashcart_inventory::open(&target, self.schema()?, flashcart_core::Settings::default())
            .await
            .with_context(|| format!("opening the inventory at {}", describe(&target)))
    }

    /// The Redis deployment: a cluster when `--redis-cluster` names nodes, else one server.
    pub fn target(&self) -> flashcart_inventory::Target {
        if self.redis_cluster.is_empty() {
            flashcart_inventory::Target::Single(self.redis_url.clone())
        } else {
            flashcart_inventory::Target::Cluster(self.redis_cluster.clone())
        }
    }

    /// Connects to Redis: a reconnecting connection manager for one server, a cluster-aware
    /// connection for a cluster.
    ///
    /// # Errors
    /// When an address is invalid or Redis cannot be reached.
    pub async fn connect_redis(&self) -> anyhow::Result<flashcart_inventory::RedisConn> {
        let target = self.target();
        flashcart_inventory::RedisConn::connect(&target)
            .await
            .with_context(|| format!("connecting to {}", describe(&target)))
    }
}

/// A URL fit for logs and error messages: its password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn describe(target: &flashcart_inventory::Target) -> String {
    match target {
        flashcart_inventory::Target::Single(url) => redact(url),
        flashcart_inventory::Target::Cluster(nodes) => {
            let nodes: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
            format!("cluster {}", nodes.join(","))
        }
    }
}

/// Runs settlement until `shutdown` completes: consumes every partition stream into the
/// ledger, claims and retries, trims, and serves metrics. On shutdown it finishes the batch
/// in hand (applied and acknowledged) and returns.
///
/// # Errors
/// When the ledger cannot be opened, or Redis cannot be reached (or its consumer groups
/// created) within [`START_PATIENCE`] of the start. Failures while running are logged and
/// retried with backoff; they do not end the service.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, None, shutdown).await
}

/// [`run`], with a hook run between commit and acknowledgement (fault injection in tests).
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: Config,
    after_commit: Option<consumer::AfterCommit>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let schema = config.schema()?;
    let ledger = config.open_ledger().await?;
    let metrics = config
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(Metrics::process()));
    let mut consumer_config = config.consumer_config();
    consumer_config.after_commit = after_commit;
    let mut shutdown = std::pin::pin!(shutdown);
    // Redis may not be ready yet, or may fail over while settlement starts (a cluster still
    // electing, a server restarting): the start-up steps are retried for a while, so a blip
    // does not end the service; an address that never answers still ends it with the error,
    // naming it.
    let started = Instant::now();
    let mut pause = START_RETRY_FIRST;
    let ready = loop {
        let failed = match start(&config, &ledger, schema, &consumer_config, &metrics).await {
            Ok(ready) => break ready,
            Err(e) => e,
        };
        if started.elapsed() >= START_PATIENCE {
            return Err(failed.context(format!(
                "settlement could not start within {START_PATIENCE:?}"
            )));
        }
        tracing::warn!(
            error = format!("{failed:#}"),
            "settlement cannot start yet; retrying"
        );
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(START_RETRY_MAX);
    };
    serve(&config, ready, ledger, metrics, shutdown).await
}

/// How long settlement retries its start-up steps (connecting, creating the consumer groups,
/// guarding the partitions) before it gives up with the last error.
pub const START_PATIENCE: Duration = Duration::from_secs(30);
const START_RETRY_FIRST: Duration = Duration::from_millis(100);
const START_RETRY_MAX: Duration = Duration::from_secs(2);

/// What the service loop runs on, once every start-up step has succeeded.
struct Ready {
    consumer: Consumer<flashcart_inventory::RedisConn>,
    inventory: flashcart_inventory::NativeInventory,
    recovery: recovery::Recovery,
}

/// The start-up steps, in order; each is safe to run again after a failure.
async fn start(
    config: &Config,
    ledger: &Ledger,
    schema: KeySchema,
    consumer_config: &ConsumerConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Ready> {
    let redis = config.connect_redis().await?;
    let consumer = Consumer::new(
        redis,
        ledger.clone(),
        schema,
        consumer_config.clone(),
        metrics.clone(),
    )
    .await
    .context("creating the consumer groups")?;
    let inventory = config.open_inventory().await?;
    let recovery = recovery::Recovery::new(
        inventory.clone(),
        ledger.clone(),
        metrics.clone(),
        &config.group,
    );
    // Before anything is committed: a partition the ledger knows must be fenced after a
    // restart that lost writes, and that needs its guard on disk first.
    let guarded = recovery.guard().await.context("guarding the partitions")?;
    if guarded > 0 {
        tracing::info!(partitions = guarded, "ledger guards set");
    }
    Ok(Ready {
        consumer,
        inventory,
        recovery,
    })
}

/// The service loop over a ready consumer.
async fn serve(
    config: &Config,
    ready: Ready,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Ready {
        mut consumer,
        inventory,
        recovery,
    } = ready;
    let name = consumer.name().to_owned();
    let timers = if config.no_timers {
        None
    } else {
        Some(timers::Timers::new(
            inventory,
            ledger.clone(),
            metrics.clone(),
            config.timer_batch,
        ))
    };
    let server = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?;
            // 503 once the worker loop has not succeeded for ten maintenance periods (at
            // least 30 s): long enough for a failover's retries, short enough to page.
            let stale = (config.maintain_every * 10).max(Duration::from_secs(30));
            let health = Arc::clone(&metrics);
            Some(tokio::spawn(flashcart_telemetry::serve(
                listener,
                metrics.registry().clone(),
                move || health.healthy(stale),
                std::future::pending(),
            )))
        }
        None => None,
    };
    tracing::info!(consumer = %name, ledger = ?ledger.backend(), "settlement running");

    tokio::pin!(shutdown);
    let mut last_maintenance = Instant::now() - config.maintain_every;
    let mut last_recovery = Instant::now() - config.maintain_every;
    let mut failures: u32 = 0;
    loop {
        // Shutdown is only looked at between batches: a batch in hand is always finished.
        let stop = is_done(&mut shutdown);
        if stop {
            break;
        }
        // Apart from the rest of maintenance, and whatever the consumer's last step did: after
        // a Redis restart steps may fail (a lost consumer group) until recovery has run.
        if last_recovery.elapsed() >= config.maintain_every {
            last_recovery = Instant::now();
            if let Err(e) = recovery.pass().await {
                tracing::warn!(error = %e, "recovery pass failed; retrying");
            }
        }
        let mut outcome = consumer.step().await;
        if outcome.is_ok() && last_maintenance.elapsed() >= config.maintain_every {
            last_maintenance = Instant::now();
            metrics.upkeep();
            let maintained = async {
                let recovered = consumer.recover().await?;
                let trimmed = consumer.trim().await?;
                if let Some(timers) = &timers {
                    let fired = timers.fire(flashcart_core::Now::Server).await?;
                    if fired != timers::Fired::default() {
                        tracing::info!(?fired, "timers fired");
                    }
                }
                Ok::<_, Error>((recovered, trimmed))
            }
            .await;
            match maintained {
                Ok((recovered, trimmed)) if recovered != Recovered::default() || trimmed > 0 => {
                    tracing::debug!(?recovered, trimmed, "maintenance");
                }
                Ok(_) => {}
                Err(e) => outcome = Err(e),
            }
        }
        let wait = match outcome {
            Ok(Step::Applied(_)) => {
                failures = 0;
                continue;
            }
            Ok(Step::Idle) => {
                failures = 0;
                config.idle_wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let transient = match &e {
                    Error::Redis(r) => {
                        r.is_timeout() || r.is_connection_dropped() || r.is_io_error()
                    }
                    _ => false,
                };
                tracing::warn!(error = %e, transient, failures, "settlement step failed; retrying");
                // Backs off, but never past the maintenance period: after a failover the
                // steps fail for the election's seconds, and the promoted replica's fenced
                // partitions must be checked by the next recovery pass, not 6 s later.
                Duration::from_millis(100u64 << failures.min(6))
                    .min(config.maintain_every.max(Duration::from_millis(100)))
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    ledger.close().await;
    tracing::info!(consumer = %name, "settlement stopped");
    Ok(())
}

/// Polls `fut` once without waiting: whether it has completed.
fn is_done<F: Future<Output = ()>>(fut: &mut std::pin::Pin<&mut F>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    fut.as_mut().poll(&mut cx).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_passwords() {
        let c = Config::new(
            "redis://:pw@127.0.0.1:6379",
            "postgres://app:s3cret@db/ledger",
        );
        let text = format!("{c:?}");
        assert!(!text.contains("pw@") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/ledger"),
            "postgres://app:***@db:5432/ledger"
        );
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("/var/lib/flashcart/ledger.sqlite"),
            "/var/lib/flashcart/ledger.sqlite"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1500").is_err(), "a bare number has no unit");
        assert!(parse_duration("soon").is_err());
    }
}
