//! `flashcart bench cold-start`: what starting each component of `spin.toml` costs, as
//! deployed, recorded per build.
//!
//! Without `--component`, every component of the manifest is loaded the way `flashcart up`
//! loads it — the manifest's variables (required ones nobody gives get a random bench value),
//! its key-value store (`--runtime-config-file`, in memory by default), and a private
//! `redis-server` the bench starts on a free port in a temp dir, with the function library
//! and a SKU loaded — and sent a real request of its route, which must answer its success
//! status ([`probe`]). The figures ([`flashcart_host::bench::measure_component`]) go into a
//! history keyed by the SHA-256 of each `.wasm` ([`history`]); each run prints them with the
//! change against the component's previous build, and `--plot` draws the history ([`plot`]).
//!
//! `--component PATH` measures one `.wasm` served on every path (the `hello` test component),
//! with the on-demand allocator beside pooling, and records it under the file's name.

pub mod history;
pub mod plot;
pub mod probe;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use flashcart_core::Settings;
use flashcart_core::keys::KeySchema;
use flashcart_core::sku::SkuSpec;
use flashcart_core::{Now, ids::SkuId};
use flashcart_host::AppConfig;
use flashcart_host::bench::{
    ColdStartOptions, ComponentBench, ComponentFigures, measure_component,
};
use flashcart_host::manifest::Manifest;
use flashcart_host::runtime_config::RuntimeConfigFile;
use flashcart_host::variables::{AppVariables, Providers};
use flashcart_inventory::Target;
use flashcart_testkit::RedisServer;

use self::history::{Figures, History, Record, Recorded};
use self::probe::{Operation, Setup};

/// Timed instantiations per component unless `--requests` says otherwise.
pub const DEFAULT_REQUESTS: usize = 10_000;
/// Cached starts per component unless `--starts` says otherwise.
pub const DEFAULT_STARTS: usize = 5;

/// Everything `flashcart bench cold-start` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Measure this one `.wasm` instead of the manifest's components: served on every path
    /// and sent `GET /`, which must answer 200 (e.g. the `hello` test component); recorded
    /// under the file's name.
    #[arg(long, conflicts_with_all = ["components", "runtime_config_file", "variables"])]
    pub component: Option<PathBuf>,
    /// The manifest whose components are measured as deployed.
    #[arg(
        long = "from",
        short = 'f',
        default_value = "spin.toml",
        env = "FLASHCART_MANIFEST"
    )]
    pub manifest: PathBuf,
    /// Measure only these components of the manifest (repeatable); all when omitted.
    #[arg(long = "component-id", short = 'c')]
    pub components: Vec<String>,
    /// Runtime config file, as `flashcart up` takes it (key-value store, variable values).
    #[arg(long)]
    pub runtime_config_file: Option<PathBuf>,
    /// Application variable value, `name=value` (repeatable). Required variables nobody
    /// gives get a random bench value; `redis_address` is always the bench's own Redis.
    #[arg(long = "variable", value_parser = key_value)]
    pub variables: Vec<(String, String)>,
    /// Timed instantiations per component (with `--component`, also in-process requests
    /// per allocator).
    #[arg(long, default_value_t = DEFAULT_REQUESTS)]
    pub requests: usize,
    /// Cached starts per component: the medians of cache load and first request.
    #[arg(long, default_value_t = DEFAULT_STARTS, value_parser = at_least_one)]
    pub starts: usize,
    /// The history file [default: $XDG_CACHE_HOME/flashcart/cold-start-history.json, else
    /// ~/.cache/flashcart/cold-start-history.json].
    #[arg(long, env = "FLASHCART_COLD_START_HISTORY")]
    pub history: Option<PathBuf>,
    /// Draw the history into this SVG file (after this run's figures are recorded).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Only draw `--plot` from the history; measure nothing.
    #[arg(long, requires = "plot")]
    pub plot_only: bool,
}

impl Options {
    /// The defaults for `manifest` (what `flashcart build --cold-start` runs).
    pub fn for_manifest(manifest: PathBuf, components: Vec<String>) -> Self {
        Self {
            component: None,
            manifest,
            components,
            runtime_config_file: None,
            variables: Vec::new(),
            requests: DEFAULT_REQUESTS,
            starts: DEFAULT_STARTS,
            history: None,
            plot: None,
            plot_only: false,
        }
    }

    fn history_path(&self) -> PathBuf {
        self.history.clone().unwrap_or_else(history::default_path)
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number ≥ 1")),
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

/// Runs the bench, records the figures, draws the plot if asked; returns the report to print.
///
/// # Errors
/// When a component cannot be loaded or answers anything but its success status (the
/// message names the component, the request, the status and the body), when Redis cannot be
/// started, or when the history or the plot cannot be written.
pub async fn run(options: Options) -> anyhow::Result<String> {
    let history_path = options.history_path();
    let mut out = String::new();
    if !options.plot_only {
        let mut history = History::load(&history_path)?;
        let recorded = match &options.component {
            Some(wasm) => single(&options, wasm, &mut history, &mut out).await?,
            None => deployed(&options, &mut history, &mut out).await?,
        };
        history
            .save(&history_path)
            .with_context(|| format!("saving the history {}", history_path.display()))?;
        let _ = writeln!(
            out,
            "\nhistory: {} ({} records)\nchange against each component's previous build:",
            history_path.display(),
            history.records.len()
        );
        for r in &recorded {
            let _ = writeln!(out, "{}", r.change_line());
        }
    }
    if let Some(path) = &options.plot {
        plot::history(&History::load(&history_path)?, path)?;
        let _ = writeln!(out, "plot: {}", path.display());
    }
    Ok(out)
}

/// `--component PATH`: the host's single-file bench, recorded under the file's stem.
async fn single(
    options: &Options,
    wasm: &Path,
    history: &mut History,
    out: &mut String,
) -> anyhow::Result<Vec<Recorded>> {
    let load = crate::cpu::load_average();
    let report = flashcart_host::bench::cold_start(&ColdStartOptions {
        component: wasm.to_owned(),
        requests: options.requests,
        starts: options.starts,
    })
    .await
    .with_context(|| format!("benchmarking {}", wasm.display()))?;
    out.push_str(&report.to_markdown());
    let name = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component".to_owned());
    let figures = Figures {
        compile_ms: ms(report.compile),
        cache_load_ms: ms(report.cache_load),
        first_request_ms: ms(report.first_request),
        instantiate_p50_us: us(report.pooling.instantiate.p50),
        instantiate_p99_us: us(report.pooling.instantiate.p99),
        memory_kib: report.memory.linear_bytes as f64 / 1024.0,
        table_elements: report.memory.table_elements,
    };
    let record = new_record(name, wasm, figures, options, load)?;
    Ok(vec![history.record(record)])
}

/// Every component of the manifest (or those of `-c`), as deployed.
async fn deployed(
    options: &Options,
    history: &mut History,
    out: &mut String,
) -> anyhow::Result<Vec<Recorded>> {
    let manifest_path = std::fs::canonicalize(&options.manifest).with_context(|| {
        format!(
            "manifest {} not found (run from the repository, or pass --from)",
            options.manifest.display()
        )
    })?;
    let manifest = Manifest::load(&manifest_path)?;
    let ids: Vec<String> = if options.components.is_empty() {
        manifest.components.keys().cloned().collect()
    } else {
        options.components.clone()
    };
    // Everything that can be refused is refused before anything starts.
    let mut plan = Vec::new();
    for id in &ids {
        let decl = manifest.components.get(id).with_context(|| {
            format!(
                "no component `{id}` in {} (it has: {})",
                manifest_path.display(),
                manifest
                    .components
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let source = decl.source_path(&manifest.base_dir);
        anyhow::ensure!(
            source.is_file(),
            "component `{id}`: {} is missing (build it: flashcart build)",
            source.display()
        );
        plan.push((id.clone(), Operation::of_component(&manifest, id)?, source));
    }
    let load = crate::cpu::load_average();
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .context("starting redis-server")?
        .context("starting a private redis-server")?;
    let (app, variables) = app_config(options, &manifest, &manifest_path, &redis)?;
    let value = |name: &str| variables.get(name).map(|v| v.expose().to_owned());
    let partitions: u32 = value("partitions")
        .unwrap_or_else(|| "16".to_owned())
        .parse()
        .context("variable partitions")?;
    let inventory = flashcart_inventory::open(
        &Target::Single(redis.url()),
        KeySchema::new(partitions).context("variable partitions")?,
        Settings::edge(None),
    )
    .await
    .context("loading the function library into the bench's redis-server")?;
    let run = crate::sale::random_token()[..8].to_owned();
    let sku = SkuId::parse(&format!("cold-{run}"))?;
    let sku_body = sku_body(&sku);
    let spec: SkuSpec = serde_json::from_value(sku_body.clone()).context("the bench's SKU")?;
    inventory
        .load_sku(&spec, Now::Server)
        .await
        .with_context(|| format!("loading SKU {sku}"))?;
    let admin_token = value("admin_token").unwrap_or_default();
    let psp_signing_secrets = value("psp_signing_secrets").unwrap_or_default();
    let setup = Setup {
        inventory: &inventory,
        sku: &sku,
        sku_body: &sku_body,
        admin_token: &admin_token,
        psp_signing_secrets: &psp_signing_secrets,
        run: &run,
    };

    let _ = writeln!(
        out,
        "cold start of {} as deployed: private redis-server on 127.0.0.1:{} (library and SKU \
         {sku} loaded), {} instantiations and {} cached starts per component, load average \
         {}\n",
        manifest_path.display(),
        redis.port(),
        options.requests,
        options.starts,
        load.map_or("unknown".to_owned(), |l| format!(
            "{:.2} {:.2} {:.2}",
            l[0], l[1], l[2]
        ))
    );
    out.push_str(
        "| component | request | answered | compile | cache load | first request | \
         instantiate p50 | instantiate p99 | memory per instance |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut recorded = Vec::new();
    for (id, operation, source) in plan {
        eprintln!("cold start: measuring `{id}`");
        let probes = setup
            .probes(operation, options.starts + 1)
            .await
            .with_context(|| format!("preparing the requests for `{id}`"))?;
        let request = probes[0].to_string();
        let figures = measure_component(ComponentBench {
            app: app.clone(),
            component: id.clone(),
            expect: operation.success(),
            probes,
            instantiations: options.requests,
            starts: options.starts,
        })
        .await?;
        let _ = writeln!(out, "{}", row(&figures, &request, operation.success()));
        let record = new_record(id, &source, figures_of(&figures), options, load)?;
        recorded.push(history.record(record));
    }
    Ok(recorded)
}

/// The app as `flashcart up` would load it, the bench's Redis its `redis_address`, and the
/// variables' values (the probes need the admin token, the signing secrets, the partitions).
fn app_config(
    options: &Options,
    manifest: &Manifest,
    manifest_path: &Path,
    redis: &RedisServer,
) -> anyhow::Result<(AppConfig, AppVariables)> {
    let runtime_config = match &options.runtime_config_file {
        Some(path) => RuntimeConfigFile::load(path)?,
        None => RuntimeConfigFile::default(),
    };
    // Not the process environment (`SPIN_VARIABLE_*`): nothing outside the command line
    // may point the bench at another Redis or change what it measures.
    let mut cli: BTreeMap<String, String> = options.variables.iter().cloned().collect();
    cli.insert(
        "redis_address".to_owned(),
        format!("127.0.0.1:{}", redis.port()),
    );
    for (name, decl) in &manifest.variables {
        if decl.required && !cli.contains_key(name) && !runtime_config.variables.contains_key(name)
        {
            cli.insert(
                name.clone(),
                format!("bench-{name}-{}", crate::sale::random_token()),
            );
        }
    }
    let providers = Providers {
        cli,
        ..Providers::default()
    };
    let variables = AppVariables::resolve(
        manifest,
        &Providers {
            runtime_config: runtime_config.variables,
            ..providers.clone()
        },
    )?;
    let mut app = AppConfig::new(manifest_path);
    app.runtime_config = options.runtime_config_file.clone();
    app.providers = providers;
    Ok((app, variables))
}

/// The SKU the bench loads (and, renamed, what the admin component is sent): a million
/// units on sale from a minute ago for a day, no per-buyer limit.
fn sku_body(sku: &SkuId) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "sku": sku.as_str(),
        "stock": 1_000_000,
        "price": 100,
        "currency": "EUR",
        "sale_start": now.saturating_sub(60_000),
        "sale_end": now + 24 * 3_600_000,
        "per_buyer_limit": 0,
        "reservation_ttl_ms": 3_600_000,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn figures_of(f: &ComponentFigures) -> Figures {
    Figures {
        compile_ms: ms(f.compile),
        cache_load_ms: ms(f.cache_load),
        first_request_ms: ms(f.first_request),
        instantiate_p50_us: us(f.instantiate.p50),
        instantiate_p99_us: us(f.instantiate.p99),
        memory_kib: f.memory.linear_bytes as f64 / 1024.0,
        table_elements: f.memory.table_elements,
    }
}

fn row(f: &ComponentFigures, request: &str, status: u16) -> String {
    let x = figures_of(f);
    format!(
        "| {} | {request} | {status} | {:.1} ms | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs | {:.0} KiB (+{} table elements) |",
        f.component,
        x.compile_ms,
        x.cache_load_ms,
        x.first_request_ms,
        x.instantiate_p50_us,
        x.instantiate_p99_us,
        x.memory_kib,
        x.table_elements
    )
}

fn new_record(
    component: String,
    source: &Path,
    figures: Figures,
    options: &Options,
    load: Option<[f64; 3]>,
) -> anyhow::Result<Record> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    Ok(Record {
        component,
        digest: history::digest_of(source)?,
        source: source.display().to_string(),
        size_bytes: std::fs::metadata(source)
            .with_context(|| format!("reading {}", source.display()))?
            .len(),
        figures,
        instantiations: options.requests,
        starts: options.starts,
        host: format!(
            "flashcart {}, wasmtime {}",
            env!("CARGO_PKG_VERSION"),
            flashcart_host::runtime::WASMTIME_VERSION
        ),
        machine: machine(),
        load,
        measured_at: now.clone(),
        first_measured_at: now,
        runs: 1,
    })
}

/// `host: CPU model, N cores`, from `/proc` where there is one.
fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown host".to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{host}: {cpu}, {cores} cores")
}
