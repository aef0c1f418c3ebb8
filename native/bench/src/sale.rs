//! `flashcart bench sale`: a flash sale over real HTTP, its baselines in the same run, and
//! the checks that nothing was oversold.
//!
//! [`run`] sets the sale up ([`Options`]: nodes it starts itself, or `--url` nodes), runs
//! every level of every regime and baseline, checks, writes `sale.json` and `sale.svg` into
//! the output directory and returns the [`Report`] (the CLI prints its table).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use flashcart_core::Settings;
use flashcart_core::ids::SkuId;
use flashcart_core::inventory::RateLimit;
use flashcart_core::keys::KeySchema;
use flashcart_inventory::{NativeInventory, RedisConn, Target as RedisTarget};
use flashcart_settlement::parse_duration;
use flashcart_testkit::RedisServer;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::{ExposeSecret, SecretString};

use crate::baseline::{self, AofGrowth, AofState, DirectReserve, MinimalDeduct};
use crate::checks::{self, Readers, SkuCheck};
use crate::cpu::{self, Meter, Watched};
use crate::driver::{self, Bound, Finished, Level, Plan, Target};
use crate::http::{HttpTarget, Request};
use crate::node::{self, Process, Up};
use crate::report::{
    self, Checks, DropStory, Machine, RedisStallInRun, Report, Run, Setup, Subject,
};

/// The settlement consumer group whose backlog the bench waits on.
const SETTLEMENT_GROUP: &str = "settlement";

/// The sale's regimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Regime {
    /// Huge stock; every request a new buyer and Idempotency-Key.
    Sustained,
    /// `--drop-buyers` buyers for `--drop-stock` units, through sell-out and beyond.
    Drop,
}

/// The baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// A minimal deduct (HGET, HINCRBY -1, XADD) as a Redis Function, through redis-rs.
    Minimal,
    /// flashcart's `fc_reserve` through `flashcart-inventory` (redis-rs).
    FcReserve,
    /// The `hello` test component through flashcart's host (a second `flashcart up`).
    Hello,
    /// The `hello` test component under `wasmtime serve` (skipped when wasmtime is missing).
    Wasmtime,
}

/// The edge nodes' key-value store (their edge cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyValue {
    /// A SQLite file per node, as `./scripts/up.sh` serves (`infra/spin/runtime-config.toml`).
    Sqlite,
    /// `flashcart up`'s in-memory store (no runtime config).
    Memory,
}

impl KeyValue {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Memory => "memory",
        }
    }
}

/// Everything `flashcart bench sale` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The manifest the bench's own edge nodes serve (with `flashcart up`).
    #[arg(long = "from", short = 'f', default_value = "spin.toml")]
    pub manifest: PathBuf,
    /// Drive these running edge nodes instead of starting any (e.g. `spin up`): base URLs on
    /// a loopback address, comma-separated or repeated.
    #[arg(long = "url", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// With `--url`: the nodes' Redis, for the level checks and the redis-rs baselines.
    #[arg(long, requires = "urls")]
    pub redis_url: Option<String>,
    /// With `--url`: the nodes' admin token.
    #[arg(long, env = "FLASHCART_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// With `--url`: the ledger settlement writes (`postgres://…` or a SQLite path), to
    /// reconcile it with Redis after the run.
    #[arg(long, requires = "urls")]
    pub ledger_url: Option<String>,
    /// Edge nodes to start on the same Redis; the load is split over them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Closed-loop concurrencies (virtual users, one connection each); `0` for none.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub concurrency: Vec<usize>,
    /// Open-loop rates in requests per second; `0` for none.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub rate: Vec<u64>,
    /// How long each sustained and baseline run lasts (`10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send exactly this many requests in each sustained and baseline run instead.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Regimes to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sustained,drop"
    )]
    pub regime: Vec<Regime>,
    /// Units on sale in each drop.
    #[arg(long, default_value_t = 100)]
    pub drop_stock: u64,
    /// Buyers in each drop, one request each (more than the stock, to go past sell-out).
    /// Default: as many as a sustained run sends at the same level — `--requests`, or for
    /// `--duration` the open loop's rate × duration and 50 000 in a closed loop — so the
    /// sold-out answers are measured for seconds, not only while instances start.
    #[arg(long)]
    pub drop_buyers: Option<u64>,
    /// Baselines to measure beside each sustained run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "minimal,fc-reserve,hello,wasmtime"
    )]
    pub baseline: Vec<Baseline>,
    /// Measure no baselines.
    #[arg(long)]
    pub no_baselines: bool,
    /// The `hello` test component (default:
    /// `$CARGO_TARGET_DIR/wasm32-wasip2/release/fc_test_hello.wasm`).
    #[arg(long)]
    pub hello_component: Option<PathBuf>,
    /// The `wasmtime` binary (default: `wasmtime` on `PATH`).
    #[arg(long)]
    pub wasmtime: Option<PathBuf>,
    /// Arguments given to `wasmtime serve` before the component (repeatable).
    #[arg(
        long = "wasmtime-arg",
        allow_hyphen_values = true,
        default_values = ["-Scli", "-Sp3", "-Wcomponent-model-async=y"]
    )]
    pub wasmtime_args: Vec<String>,
    /// Virtual users (connections) of an open-loop run.
    #[arg(long, default_value_t = 256)]
    pub open_users: usize,
    /// Deducts sent before the first sustained run and not measured, so the nodes' instances
    /// and connections are up (`0s`: none).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A request unanswered this long counts as failed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long to wait for settlement to settle every event after the last run.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Partition count of the nodes (their `partitions` variable).
    #[arg(long, default_value_t = u32::from(KeySchema::DEFAULT_PARTITIONS))]
    pub partitions: u32,
    /// Where to write `sale.json`, `sale.svg` and the nodes' logs (default: a new temp dir,
    /// printed at the end).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compiled-code cache of the bench's nodes (default: `flashcart up`'s).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The key-value store of the bench's nodes (their edge cache).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub key_value: KeyValue,
    /// Log filter (`FLASHCART_LOG`) of the bench's nodes; `info` logs every request.
    #[arg(long, default_value = "warn")]
    pub node_log: String,
    /// The `flashcart` binary that runs the bench's nodes (default: this executable), to
    /// compare two builds with one load generator.
    #[arg(long)]
    pub flashcart: Option<PathBuf>,
}

impl Options {
    fn levels(&self) -> Vec<Level> {
        // 0 means "none of this kind", so `--rate 0` runs closed loop only.
        let closed = self
            .concurrency
            .iter()
            .filter(|&&c| c > 0)
            .map(|&concurrency| Level::Closed { concurrency });
        let open = self
            .rate
            .iter()
            .filter(|&&r| r > 0)
            .map(|&rate| Level::Open { rate });
        closed.chain(open).collect()
    }

    fn bound(&self) -> Bound {
        self.requests
            .map_or(Bound::Duration(self.duration), Bound::Requests)
    }

    fn plan(&self, level: Level, bound: Bound) -> Plan {
        Plan {
            level,
            bound,
            open_users: self.open_users,
            timeout: self.timeout,
        }
    }

    /// Buyers in a drop at `level` (see `--drop-buyers`), never fewer than twice the stock.
    fn drop_buyers(&self, level: Level) -> u64 {
        const CLOSED_LOOP_BUYERS: u64 = 50_000;
        self.drop_buyers.unwrap_or_else(|| {
            let like_sustained = self.bound().requests(level).unwrap_or(CLOSED_LOOP_BUYERS);
            like_sustained.max(self.drop_stock.saturating_mul(2))
        })
    }

    fn wants(&self, baseline: Baseline) -> bool {
        !self.no_baselines && self.baseline.contains(&baseline)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.levels().is_empty(),
            "give at least one --concurrency or --rate"
        );
        ensure!(!self.regime.is_empty(), "give at least one --regime");
        ensure!(self.requests != Some(0), "--requests must be at least 1");
        ensure!(!self.duration.is_zero(), "--duration must be more than 0");
        ensure!(self.open_users > 0, "--open-users must be at least 1");
        ensure!(
            (1..=16).contains(&self.nodes),
            "--nodes must be between 1 and 16"
        );
        ensure!(self.drop_stock > 0, "--drop-stock must be at least 1");
        ensure!(
            self.drop_stock <= flashcart_core::sku::SkuSpec::MAX_STOCK,
            "--drop-stock is more than a SKU may hold"
        );
        ensure!(
            self.drop_buyers != Some(0),
            "--drop-buyers must be at least 1"
        );
        if !self.urls.is_empty() {
            ensure!(
                self.nodes == 1,
                "--nodes starts nodes; with --url, list every node's URL instead"
            );
            ensure!(
                self.admin_token.is_some(),
                "--url needs --admin-token (or FLASHCART_ADMIN_TOKEN): the bench loads its SKUs \
                 through the admin API"
            );
        }
        Ok(())
    }
}

/// The resolved address of a loopback URL (`http://127.0.0.1:3000`, `redis://localhost:6380`).
///
/// # Errors
/// When the URL is malformed, does not resolve, or names anything but a loopback address:
/// the bench sends load only to this machine.
pub async fn loopback_address(url: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL (expected scheme://host:port)"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    ensure!(!host_port.is_empty(), "{url:?} names no host");
    let with_port = if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:{default_port}")
    } else {
        host_port.to_owned()
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {scheme}://{host_port}"))?
        .collect();
    ensure!(!addresses.is_empty(), "{url:?} resolves to no address");
    if let Some(far) = addresses.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "{url:?} resolves to {far}, not a loopback address: the bench only sends load to \
             this machine (127.0.0.0/8, ::1)"
        );
    }
    Ok(addresses[0])
}

/// A random hex token (the admin token and signing secret of the bench's own nodes).
pub(crate) fn random_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..2)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(unix_ms() ^ (i << 32));
            h.write_u32(std::process::id());
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where the hello component is by default: the test components' build output.
fn default_hello() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flashcart/target"))
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("wasm32-wasip2/release/fc_test_hello.wasm")
}

/// The edge under test and what the bench knows about it.
struct Sale {
    nodes: Vec<SocketAddr>,
    processes: Vec<Process>,
    _redis: Option<RedisServer>,
    admin_token: String,
    ledger_url: Option<String>,
    conn: Option<RedisConn>,
    inventory: Option<Arc<NativeInventory>>,
    schema: KeySchema,
    mode: &'static str,
}

impl Sale {
    async fn start(options: &Options, work: &Path, logs: &Path) -> anyhow::Result<Self> {
        let schema = KeySchema::new(options.partitions).context("--partitions")?;
        if !options.urls.is_empty() {
            return Self::external(options, schema).await;
        }
        let manifest = std::fs::canonicalize(&options.manifest).with_context(|| {
            format!(
                "manifest {} not found (run from the repository, or pass --from)",
                options.manifest.display()
            )
        })?;
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .context("starting redis-server")?
            .context("starting a private redis-server")?;
        let redis_url = redis.url();
        let admin_token = random_token();
        let up = Up {
            binary: match &options.flashcart {
                Some(path) => path.clone(),
                None => std::env::current_exe().context("finding the flashcart binary")?,
            },
            manifest,
            variables: vec![
                (
                    "redis_address".into(),
                    format!("127.0.0.1:{}", redis.port()),
                ),
                ("partitions".into(), options.partitions.to_string()),
            ],
            secrets: vec![
                ("admin_token".into(), admin_token.clone()),
                (
                    "psp_signing_secrets".into(),
                    format!("whsec_{}", random_token()),
                ),
            ],
            settle: None,
            cache_dir: options.cache_dir.clone(),
            log_filter: options.node_log.clone(),
            sqlite_key_value: (options.key_value == KeyValue::Sqlite).then(|| work.join("kv")),
        };
        let ledger_dir = work.join("ledger");
        let mut processes = Vec::new();
        for k in 1..=options.nodes {
            // Settlement runs in the first node only: one consumer, as in `flashcart up`.
            let mut this = up.clone();
            if k == 1 {
                this.settle = Some((redis_url.clone(), ledger_dir.clone()));
            }
            processes.push(this.start(&format!("node{k}"), logs).await?);
        }
        // Settlement's start-up (an AOF rewrite on Redis before 7.2) is not the sale's.
        // (On an error the processes are killed as they drop.)
        processes[0].wait_settlement_started().await?;
        let conn = RedisConn::connect(&RedisTarget::Single(redis_url.clone()))
            .await
            .context("connecting to the private redis-server")?;
        let inventory =
            flashcart_inventory::open(&RedisTarget::Single(redis_url), schema, edge_settings())
                .await
                .context("opening the inventory")?;
        Ok(Self {
            nodes: processes.iter().map(|p| p.address).collect(),
            processes,
            _redis: Some(redis),
            admin_token,
            ledger_url: Some(ledger_dir.join("ledger.sqlite").display().to_string()),
            conn: Some(conn),
            inventory: Some(Arc::new(inventory)),
            schema,
            mode: "self-started",
        })
    }

    async fn external(options: &Options, schema: KeySchema) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for url in &options.urls {
            ensure!(
                url.starts_with("http://"),
                "{url:?}: the bench speaks plain HTTP/1.1 (http://…)"
            );
            let address = loopback_address(url, 80).await?;
            crate::http::connect(address)
                .await
                .with_context(|| format!("cannot reach the edge node at {url}"))?;
            nodes.push(address);
        }
        let (conn, inventory) = match &options.redis_url {
            Some(url) => {
                loopback_address(url, 6379).await?;
                let target = RedisTarget::Single(url.clone());
                let conn = RedisConn::connect(&target).await.with_context(|| {
                    format!("connecting to {}", flashcart_settlement::redact(url))
                })?;
                let inventory = flashcart_inventory::open(&target, schema, edge_settings())
                    .await
                    .with_context(|| {
                        format!(
                            "opening the inventory at {}",
                            flashcart_settlement::redact(url)
                        )
                    })?;
                (Some(conn), Some(Arc::new(inventory)))
            }
            None => (None, None),
        };
        Ok(Self {
            nodes,
            processes: Vec::new(),
            _redis: None,
            admin_token: options
                .admin_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
                .unwrap_or_default(),
            ledger_url: options.ledger_url.clone(),
            conn,
            inventory,
            schema,
            mode: "external",
        })
    }

    /// Loads (preheats) a SKU through the admin API of the first node.
    async fn load_sku(&self, sku: &str, stock: u64, per_buyer_limit: u32) -> anyhow::Result<()> {
        let now = unix_ms();
        let body = serde_json::json!({
            "stock": stock,
            "price": 100,
            "currency": "EUR",
            "sale_start": now.saturating_sub(60_000),
            "sale_end": now + 24 * 3_600_000,
            "per_buyer_limit": per_buyer_limit,
            // Long enough that no reservation expires during the run: the checks count them.
            "reservation_ttl_ms": 3_600_000,
        });
        let (status, answer) = crate::http::exchange(
            self.nodes[0],
            http::Method::PUT,
            &format!("/v1/admin/skus/{sku}"),
            Some(&self.admin_token),
            Some(&body),
        )
        .await
        .with_context(|| format!("loading SKU {sku} through the admin API"))?;
        ensure!(
            matches!(status, 200 | 201),
            "loading SKU {sku}: the admin API answered {status}: {answer}"
        );
        Ok(())
    }

    /// Stops the nodes; says what did not stop cleanly.
    async fn stop(self) -> Vec<String> {
        let mut notes = Vec::new();
        // The settling node last, so it settles what the others decided until the end.
        for process in self.processes.into_iter().rev() {
            let name = process.name.clone();
            if let Err(e) = process.stop().await {
                notes.push(format!("{name} did not stop cleanly: {e:#}"));
            }
        }
        notes
    }
}

/// Progress on stderr, hidden when stderr is not a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new(label: &str, total: Option<u64>) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            match total {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template("{prefix:>36} {bar:30} {pos}/{len} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{prefix:>36} {spinner} {pos} requests {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            }
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(label.to_owned());
        Self(bar)
    }
}

impl driver::Progress for Bar {
    fn at(&self, requests: u64) {
        self.0.set_position(requests);
        if self.0.length().is_none() {
            self.0.tick();
        }
    }
}

/// Measures runs: the driver, plus CPU and Redis call counts around it.
struct Measure<'a> {
    options: &'a Options,
    meter: Meter,
    conn: Option<RedisConn>,
    /// The bench started Redis and turned its latency monitor on: each run reads its stalls.
    stalls_watched: bool,
}

impl Measure<'_> {
    async fn run<T: Target>(
        &self,
        subject: Subject,
        level: Level,
        bound: Bound,
        target: Arc<T>,
    ) -> anyhow::Result<(Run, Finished)> {
        let total = bound.requests(level);
        let bar = Bar::new(&format!("{level} {}", subject.label()), total);
        let calls_before = self.fcalls().await;
        let aof_before = self.aof().await;
        self.forget_stalls().await;
        let started_unix_s = unix_ms() / 1000;
        let cpu_before = self.meter.sample();
        let finished = driver::run(target, self.options.plan(level, bound), &bar)
            .await
            .with_context(|| format!("{} at {level}", subject.label()))?;
        let cpu_after = self.meter.sample();
        let calls_after = self.fcalls().await;
        let aof_after = self.aof().await;
        bar.0.finish_and_clear();
        let mut run = Run::new(subject, level, &finished);
        run.cpu = self
            .meter
            .used(&cpu_before, &cpu_after, finished.elapsed, run.requests);
        run.fcalls_per_request = calls_before
            .zip(calls_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / run.requests.max(1) as f64);
        run.redis_stalls = self.stalls(started_unix_s).await;
        run.aof = aof_before
            .zip(aof_after)
            .map(|(before, after)| AofGrowth::between(before, after, run.requests));
        Ok((run, finished))
    }

    async fn aof(&self) -> Option<AofState> {
        baseline::aof(self.conn.as_ref()?).await.ok().flatten()
    }

    async fn forget_stalls(&self) {
        if let (true, Some(conn)) = (self.stalls_watched, &self.conn) {
            let _ = baseline::forget_stalls(conn).await;
        }
    }

    /// Redis's stalls during the run, each placed in the run's second it happened in.
    async fn stalls(&self, started_unix_s: u64) -> Option<Vec<RedisStallInRun>> {
        let conn = self.conn.as_ref().filter(|_| self.stalls_watched)?;
        let stalls = baseline::stalls(conn).await.ok()?;
        Some(
            stalls
                .into_iter()
                .map(|stall| RedisStallInRun {
                    second: stall.latest_at_unix_s.saturating_sub(started_unix_s),
                    stall,
                })
                .collect(),
        )
    }

    async fn fcalls(&self) -> Option<u64> {
        let calls = baseline::command_calls(self.conn.as_ref()?).await.ok()?;
        Some(calls.get("fcall").copied().unwrap_or(0) + calls.get("fcall_ro").copied().unwrap_or(0))
    }
}

/// Counts per SKU for the checks.
#[derive(Default)]
struct Sold {
    created: u64,
    unanswered: u64,
}

impl Sold {
    fn add(&mut self, finished: &Finished) {
        self.created += finished.tally.statuses.get(&201).copied().unwrap_or(0);
        self.unanswered += finished.tally.failures.values().sum::<u64>();
    }
}

/// The hello baselines' processes.
struct Hello {
    host: Option<Process>,
    wasmtime: Option<Process>,
}

impl Hello {
    async fn start(
        options: &Options,
        work: &Path,
        logs: &Path,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut hello = Self {
            host: None,
            wasmtime: None,
        };
        let wants_host = options.wants(Baseline::Hello);
        let wants_wasmtime = options.wants(Baseline::Wasmtime);
        if !(wants_host || wants_wasmtime) || !options.regime.contains(&Regime::Sustained) {
            return Ok(hello);
        }
        let component = options
            .hello_component
            .clone()
            .unwrap_or_else(default_hello);
        if !component.is_file() {
            notes.push(format!(
                "hello baselines skipped: no component at {} (build it with \
                 ./scripts/build-test-components.sh, or pass --hello-component)",
                component.display()
            ));
            return Ok(hello);
        }
        if wants_host {
            let up = Up {
                binary: match &options.flashcart {
                    Some(path) => path.clone(),
                    None => std::env::current_exe().context("finding the flashcart binary")?,
                },
                manifest: node::hello_manifest(work, &component)?,
                variables: Vec::new(),
                secrets: Vec::new(),
                settle: None,
                cache_dir: options.cache_dir.clone(),
                log_filter: options.node_log.clone(),
                sqlite_key_value: None,
            };
            hello.host = Some(up.start("hello-host", logs).await?);
        }
        if wants_wasmtime {
            match options
                .wasmtime
                .clone()
                .or_else(|| node::find_on_path("wasmtime"))
            {
                None => notes.push(
                    "wasmtime serve baseline skipped: no `wasmtime` on PATH (pass --wasmtime)"
                        .to_owned(),
                ),
                Some(wasmtime) => {
                    match node::start_wasmtime(&wasmtime, &options.wasmtime_args, &component, logs)
                        .await
                    {
                        Ok(p) => hello.wasmtime = Some(p),
                        Err(e) => notes.push(format!(
                            "wasmtime serve baseline skipped: it did not start: {e:#}"
                        )),
                    }
                }
            }
        }
        Ok(hello)
    }

    /// Stops both; says what did not stop cleanly.
    async fn stop(self) -> Vec<String> {
        let mut unclean = Vec::new();
        for process in [self.host, self.wasmtime].into_iter().flatten() {
            let name = process.name.clone();
            if let Err(e) = process.stop().await {
                unclean.push(format!("{name} did not stop cleanly: {e:#}"));
            }
        }
        unclean
    }
}

/// Runs the sale benchmark; writes `sale.json` and `sale.svg` into the output directory.
///
/// # Errors
/// Bad options, unreachable nodes or Redis, a process that does not start, a run whose users
/// cannot connect, or a report that cannot be written. Failed *checks* are not errors: they
/// are in the report (`checks.passed`), which is written either way.
pub async fn run(options: Options) -> anyhow::Result<(Report, PathBuf)> {
    options.validate()?;
    let started_at = unix_ms();
    let load_before = cpu::load_average();
    let out = output_dir(&options)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let work = tempfile::Builder::new()
        .prefix("flashcart-bench-work-")
        .tempdir()
        .context("creating a work dir")?;
    let mut notes = Vec::new();
    let sale = Sale::start(&options, work.path(), &logs).await?;
    let hello = match Hello::start(&options, work.path(), &logs, &mut notes).await {
        Ok(h) => h,
        Err(e) => {
            sale.stop().await;
            return Err(e);
        }
    };
    let setup = Setup {
        mode: sale.mode.to_owned(),
        nodes: sale.nodes.iter().map(|a| format!("http://{a}")).collect(),
        bench_version: env!("CARGO_PKG_VERSION").to_owned(),
        bound: match options.bound() {
            Bound::Requests(n) => format!("{n} requests"),
            Bound::Duration(d) => format!("{d:?}"),
        },
        open_users: options.open_users,
        node_log: (sale.mode == "self-started").then(|| options.node_log.clone()),
        key_value: (sale.mode == "self-started").then(|| options.key_value.name().to_owned()),
    };
    let measured = async {
        let bench = Bench::new(&options, &sale, &hello, started_at).await?;
        let sold = bench.sell().await?;
        let load_after = cpu::load_average();
        let checks = bench.check(&sold.skus, &mut notes).await?;
        anyhow::Ok((sold.runs, checks, bench.redis_version, load_after))
    }
    .await;
    // Stopped whatever happened: a failed run must not leave nodes behind.
    let mut unclean = hello.stop().await;
    unclean.extend(sale.stop().await);
    let (runs, mut checks, redis_version, load_after) = measured?;
    checks.passed &= unclean.is_empty();
    notes.extend(unclean);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    notes.extend(machine_note(setup.nodes.len(), cores));
    let report = Report {
        started_at_unix_ms: started_at,
        machine: Machine {
            cores,
            load_before,
            load_after,
            redis_version,
        },
        setup,
        ratios: report::ratios(&runs),
        runs,
        checks,
        notes,
    };
    let json = out.join("sale.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    crate::plot::latency_vs_load(&report.runs, &out.join("sale.svg"))?;
    Ok((report, out))
}

/// `--out`, or a new temp dir that is kept.
fn output_dir(options: &Options) -> anyhow::Result<PathBuf> {
    match &options.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the output directory {}", dir.display()))?;
            Ok(dir.clone())
        }
        None => Ok(tempfile::Builder::new()
            .prefix("flashcart-bench-")
            .tempdir()
            .context("creating a temp dir for the report")?
            .keep()),
    }
}

/// What a machine of `cores` cores can and cannot show with `nodes` nodes on it.
fn machine_note(nodes: usize, cores: usize) -> Option<String> {
    if nodes > 1 {
        Some(format!(
            "{nodes} edge nodes, Redis, settlement and the load generator shared {cores} cores: \
             this run shows what splitting the load over nodes costs, not scale-out (that needs \
             each node on cores of its own); see each process's CPU column"
        ))
    } else if cores <= 4 {
        Some(format!(
            "the edge node, Redis, settlement and the load generator shared {cores} cores: \
             req/s is bounded by the machine as a whole; see each process's CPU column"
        ))
    } else {
        None
    }
}

/// A SKU the bench sold from, and what it counted.
struct SkuSold {
    sku: String,
    regime: &'static str,
    stock: u64,
    sold: Sold,
}

/// What selling produced: the runs, and per SKU what was counted.
struct Sales {
    runs: Vec<Run>,
    skus: Vec<SkuSold>,
}

/// One benchmark over a started sale.
struct Bench<'a> {
    options: &'a Options,
    sale: &'a Sale,
    hello: &'a Hello,
    /// Unique per bench run: SKU names, buyers and keys carry it.
    id: String,
    measure: Measure<'a>,
    redis_version: Option<String>,
}

/// Redis stalls this long and longer are reported per run (its latency monitor's threshold).
const REDIS_STALL_THRESHOLD_MS: u64 = 2;

/// SKUs with this many units never sell out during a run.
const HUGE: u64 = flashcart_core::sku::SkuSpec::MAX_STOCK;

impl<'a> Bench<'a> {
    /// Finds the processes to watch (nodes, hello servers, Redis, the bench itself).
    async fn new(
        options: &'a Options,
        sale: &'a Sale,
        hello: &'a Hello,
        started_at: u64,
    ) -> anyhow::Result<Self> {
        let mut watched: Vec<Watched> = sale
            .processes
            .iter()
            .chain(hello.host.iter())
            .chain(hello.wasmtime.iter())
            .map(|p| Watched {
                name: p.name.clone(),
                pid: p.pid(),
            })
            .collect();
        let mut redis_version = None;
        if let Some(conn) = &sale.conn {
            redis_version = baseline::server_info(conn, "redis_version").await?;
            let pid = baseline::server_info(conn, "process_id").await?;
            if let Some(pid) = pid.and_then(|p| p.parse().ok()) {
                watched.push(Watched {
                    name: "redis".into(),
                    pid,
                });
            }
        }
        watched.push(Watched {
            name: "bench".into(),
            pid: std::process::id(),
        });
        // Only on the bench's own Redis: turning the monitor on changes the server's settings.
        let stalls_watched = match (&sale._redis, &sale.conn) {
            (Some(_), Some(conn)) => {
                baseline::watch_stalls(conn, REDIS_STALL_THRESHOLD_MS).await?;
                true
            }
            _ => false,
        };
        Ok(Self {
            options,
            sale,
            hello,
            id: format!("{started_at:x}"),
            measure: Measure {
                options,
                meter: Meter::new(watched),
                conn: sale.conn.clone(),
                stalls_watched,
            },
            redis_version,
        })
    }

    fn sku(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.id)
    }

    /// Every level of every regime, with the baselines beside each sustained run.
    async fn sell(&self) -> anyhow::Result<Sales> {
        let options = self.options;
        let sustained = options.regime.contains(&Regime::Sustained);
        let mut sales = Sales {
            runs: Vec::new(),
            skus: Vec::new(),
        };
        let mut sustained_sold = Sold::default();
        let mut direct_sold = Sold::default();
        if sustained {
            self.sale.load_sku(&self.sku("sustained"), HUGE, 0).await?;
        }
        let minimal = match &self.sale.conn {
            Some(conn) if sustained && options.wants(Baseline::Minimal) => Some(Arc::new(
                MinimalDeduct::prepare(conn.clone(), &format!("{}-m", self.id)).await?,
            )),
            _ => None,
        };
        let direct = match &self.sale.inventory {
            Some(inventory) if sustained && options.wants(Baseline::FcReserve) => {
                self.sale.load_sku(&self.sku("direct"), HUGE, 0).await?;
                Some((Arc::clone(inventory), SkuId::parse(&self.sku("direct"))?))
            }
            _ => None,
        };
        if sustained && !options.warmup.is_zero() {
            // Not measured: every node's first instances start, build their edge and open
            // their connections here, so the first level's tail is not the nodes' start-up
            // (which `flashcart bench cold-start` measures). Its sales are counted in the
            // checks like any other.
            let target = self.deduct_target(&self.sku("sustained"), "warmup");
            let level = Level::Closed {
                concurrency: options.open_users.min(64),
            };
            let (_, finished) = self
                .measure
                .run(
                    Subject::Sustained,
                    level,
                    Bound::Duration(options.warmup),
                    target,
                )
                .await?;
            sustained_sold.add(&finished);
        }
        for (k, level) in options.levels().into_iter().enumerate() {
            if sustained {
                let target = self.deduct_target(&self.sku("sustained"), &format!("s{k}"));
                let (run, finished) = self
                    .measure
                    .run(Subject::Sustained, level, options.bound(), target)
                    .await?;
                sustained_sold.add(&finished);
                sales.runs.push(run);
                if let Some(minimal) = &minimal {
                    let (run, _) = self
                        .measure
                        .run(
                            Subject::MinimalDeduct,
                            level,
                            options.bound(),
                            Arc::clone(minimal),
                        )
                        .await?;
                    minimal.clear_events().await?;
                    sales.runs.push(run);
                }
                if let Some((inventory, sku)) = &direct {
                    // Buyers and keys new in every run, like the sustained regime's: a repeated
                    // key would be a replay, which takes no stock.
                    let prefix = format!("{}-r{k}", self.id);
                    let target = Arc::new(DirectReserve::new(
                        Arc::clone(inventory),
                        sku.clone(),
                        &prefix,
                    ));
                    let (run, finished) = self
                        .measure
                        .run(Subject::FcReserve, level, options.bound(), target)
                        .await?;
                    direct_sold.add(&finished);
                    sales.runs.push(run);
                }
                sales.runs.extend(self.hello_runs(level).await?);
            }
            if options.regime.contains(&Regime::Drop) {
                let (run, sku) = self.drop(k, level).await?;
                sales.skus.push(sku);
                sales.runs.push(run);
            }
        }
        if sustained {
            sales.skus.push(SkuSold {
                sku: self.sku("sustained"),
                regime: "sustained",
                stock: HUGE,
                sold: sustained_sold,
            });
        }
        if direct.is_some() {
            sales.skus.push(SkuSold {
                sku: self.sku("direct"),
                regime: "fc_reserve",
                stock: HUGE,
                sold: direct_sold,
            });
        }
        Ok(sales)
    }

    /// Deducts through the edge nodes; request `i` is buyer and key `<id>-<run>-<i>`.
    fn deduct_target(&self, sku: &str, run: &str) -> Arc<HttpTarget> {
        Arc::new(HttpTarget::new(
            self.sale.nodes.clone(),
            Request::Deduct {
                sku: sku.to_owned(),
                prefix: format!("{}-{run}", self.id),
            },
        ))
    }

    /// The hello baselines at `level`.
    async fn hello_runs(&self, level: Level) -> anyhow::Result<Vec<Run>> {
        let mut runs = Vec::new();
        for (subject, process) in [
            (Subject::HelloHost, &self.hello.host),
            (Subject::HelloWasmtime, &self.hello.wasmtime),
        ] {
            if let Some(process) = process {
                let target = Arc::new(HttpTarget::new(
                    vec![process.address],
                    Request::Get { path: "/".into() },
                ));
                let (run, _) = self
                    .measure
                    .run(subject, level, self.options.bound(), target)
                    .await?;
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// One drop at `level`: a new SKU with `--drop-stock` units, `--drop-buyers` buyers.
    async fn drop(&self, k: usize, level: Level) -> anyhow::Result<(Run, SkuSold)> {
        let options = self.options;
        let sku = self.sku(&format!("drop{k}"));
        self.sale.load_sku(&sku, options.drop_stock, 1).await?;
        let target = self.deduct_target(&sku, &format!("d{k}"));
        let (mut run, finished) = self
            .measure
            .run(
                Subject::Drop,
                level,
                Bound::Requests(options.drop_buyers(level)),
                target,
            )
            .await?;
        run.drop = Some(drop_story(&sku, options, level, &finished));
        let mut sold = Sold::default();
        sold.add(&finished);
        Ok((
            run,
            SkuSold {
                sku,
                regime: "drop",
                stock: options.drop_stock,
                sold,
            },
        ))
    }

    /// Every SKU's levels, then — after settlement drained — the ledger against Redis.
    async fn check(&self, sold: &[SkuSold], notes: &mut Vec<String>) -> anyhow::Result<Checks> {
        let readers = Readers {
            admin: Some((self.sale.nodes[0], self.sale.admin_token.as_str())),
            inventory: self.sale.inventory.as_deref(),
        };
        let mut skus: Vec<SkuCheck> = Vec::new();
        for s in sold {
            skus.push(
                checks::check_sku(
                    &readers,
                    &s.sku,
                    s.regime,
                    s.stock,
                    s.sold.created,
                    s.sold.unanswered,
                )
                .await?,
            );
        }
        let (ledger, ledger_passed) = self.check_ledger(&skus, notes).await?;
        let oversold = skus.iter().map(|s| s.oversold).sum();
        let invariant_holds = skus.iter().all(|s| {
            s.admin_invariant_holds != Some(false) && s.redis_invariant_holds != Some(false)
        });
        let passed =
            skus.iter().all(SkuCheck::passed) && ledger_passed && oversold == 0 && invariant_holds;
        Ok(Checks {
            oversold,
            invariant_holds,
            skus,
            ledger,
            passed,
        })
    }

    /// The ledger check, and whether it passed (`true` when it could not run by design).
    async fn check_ledger(
        &self,
        skus: &[SkuCheck],
        notes: &mut Vec<String>,
    ) -> anyhow::Result<(Option<checks::LedgerCheck>, bool)> {
        let sale = self.sale;
        let (Some(url), Some(conn), Some(inventory)) =
            (&sale.ledger_url, &sale.conn, &sale.inventory)
        else {
            notes.push(
                "ledger not checked: with --url, pass --redis-url and --ledger-url".to_owned(),
            );
            return Ok((None, true));
        };
        let within = self.options.drain_timeout;
        match checks::drain(conn, &sale.schema, SETTLEMENT_GROUP, within).await {
            Ok(drained) => {
                let names: Vec<String> = skus.iter().map(|s| s.sku.clone()).collect();
                let check = checks::reconcile(
                    inventory,
                    url,
                    SETTLEMENT_GROUP,
                    &names,
                    drained.as_secs_f64(),
                )
                .await?;
                let passed = check.passed();
                Ok((Some(check), passed))
            }
            Err(e) => {
                notes.push(format!("ledger NOT checked: {e:#}"));
                Ok((None, false))
            }
        }
    }
}

fn drop_story(sku: &str, options: &Options, level: Level, finished: &Finished) -> DropStory {
    let t = &finished.tally;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let sold_out_per_second = t.first_sold_out.map(|first| {
        let window = t.last_done.saturating_sub(first).as_secs_f64();
        if window > 0.0 {
            t.sold_out as f64 / window
        } else {
            f64::NAN
        }
    });
    DropStory {
        sku: sku.to_owned(),
        stock: options.drop_stock,
        buyers: options.drop_buyers(level),
        created: t.statuses.get(&201).copied().unwrap_or(0),
        sold_out: t.sold_out,
        sold_out_from_edge_flag: t.from_edge_flag,
        sell_out_ms: t.last_success.map(ms),
        first_sold_out_ms: t.first_sold_out.map(ms),
        sold_out_per_second,
    }
}

/// What the edge's deduct runs with (spin.toml's defaults: a 20-token bucket refilled at
/// 10/s, no fallback lease), so the `fc_reserve` baseline pays what a deduct pays in Redis.
fn edge_settings() -> Settings {
    Settings::edge(Some(RateLimit {
        capacity: 20,
        refill_per_second: 10,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_urls_are_targets() {
        assert_eq!(
            loopback_address("http://127.0.0.1:3000/x", 80).await.ok(),
            Some("127.0.0.1:3000".parse().expect("address"))
        );
        assert!(loopback_address("http://localhost:3000", 80).await.is_ok());
        assert_eq!(
            loopback_address("redis://:pw@127.0.0.1", 6379).await.ok(),
            Some("127.0.0.1:6379".parse().expect("address"))
        );
        assert!(loopback_address("http://[::1]:3000", 80).await.is_ok());
        let far = loopback_address("http://192.0.2.1:3000", 80).await;
        assert!(
            far.as_ref()
                .is_err_and(|e| e.to_string().contains("not a loopback address")),
            "{far:?}"
        );
        assert!(loopback_address("127.0.0.1:3000", 80).await.is_err());
    }

    /// `flashcart bench sale`'s options from its arguments, as the CLI parses them.
    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        Cli::try_parse_from(std::iter::once("sale").chain(args.iter().copied())).map(|c| c.options)
    }

    #[test]
    fn options_are_checked_before_anything_starts() {
        let defaults = parse(&[]).expect("parses");
        assert_eq!(defaults.regime, vec![Regime::Sustained, Regime::Drop]);
        assert_eq!(defaults.baseline.len(), 4);
        assert_eq!(defaults.wasmtime_args.len(), 3);
        assert_eq!(defaults.bound(), Bound::Duration(Duration::from_secs(10)));
        let ok =
            parse(&["--concurrency", "4,8", "--rate", "100", "--requests", "50"]).expect("parses");
        assert!(ok.validate().is_ok());
        assert_eq!(ok.levels().len(), 3);
        assert_eq!(ok.bound(), Bound::Requests(50));
        let no_token = parse(&["--url", "http://127.0.0.1:3000"]).expect("parses");
        assert!(no_token.validate().is_err());
        let token = parse(&["--admin-token", "tok-3f9a"]).expect("parses");
        let shown = format!("{token:?}");
        assert!(!shown.contains("tok-3f9a"), "{shown}");
        assert_eq!(
            token.admin_token.as_ref().map(|t| t.expose_secret()),
            Some("tok-3f9a")
        );
        let none = parse(&["--concurrency", "0", "--rate", "0"]).expect("parses");
        assert!(none.validate().is_err());
        let open_only = parse(&["--concurrency", "0", "--rate", "10"]).expect("parses");
        assert_eq!(open_only.levels(), vec![Level::Open { rate: 10 }]);
        assert!(parse(&["--duration", "soon"]).is_err());
        assert!(parse(&["--redis-url", "redis://127.0.0.1"]).is_err());
        assert!(
            parse(&["--drop-buyers", "0"])
                .expect("parses")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_drop_lasts_as_long_as_a_sustained_run_unless_told() {
        let parse = |args: &[&str]| parse(args).expect("parses");
        let closed = Level::Closed { concurrency: 16 };
        let open = Level::Open { rate: 2600 };
        let defaults = parse(&["--duration", "5s"]);
        assert_eq!(defaults.drop_buyers(closed), 50_000);
        assert_eq!(defaults.drop_buyers(open), 13_000);
        let counted = parse(&["--requests", "150", "--drop-stock", "20"]);
        assert_eq!(counted.drop_buyers(closed), 150);
        assert_eq!(counted.drop_buyers(open), 150);
        // Never so few that the drop cannot go past its sell-out.
        let big_stock = parse(&["--requests", "150", "--drop-stock", "100"]);
        assert_eq!(big_stock.drop_buyers(open), 200);
        let told = parse(&["--drop-buyers", "120"]);
        assert_eq!(told.drop_buyers(closed), 120);
        assert_eq!(told.drop_buyers(open), 120);
    }
}
