//! `flashcart bench cold-start`: what a cold start and a request's instance cost.
//!
//! For one component it measures, in one run:
//! - compile time (empty cache) and cache-load time (the next start);
//! - per-request instantiation (a new `Store` + instantiate from the `InstancePre`),
//!   p50/p99 over many requests, with the pooling and the on-demand allocator;
//! - a whole request in-process (instantiate + handle + collect the response);
//! - the first request over real HTTP after a cached start, and the start itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{App, AppConfig};
use crate::instance::{self, RequestState};
use crate::runtime::{Allocator, Runtime, RuntimeConfig};

/// Options of a run.
#[derive(Debug, Clone)]
pub struct ColdStartOptions {
    /// The component to measure (a WASI 0.3 HTTP handler).
    pub component: PathBuf,
    /// Instantiations per allocator.
    pub requests: usize,
}

/// Latency percentiles of a series.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean.
    pub mean: Duration,
    /// Samples.
    pub n: usize,
}

impl Percentiles {
    /// From samples (sorted here).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len().max(1);
        let at = |q: f64| {
            samples.get(
                ((n as f64 * q).ceil() as usize)
                    .saturating_sub(1)
                    .min(n - 1),
            )
        };
        let total: Duration = samples.iter().sum();
        Self {
            p50: at(0.50).copied().unwrap_or_default(),
            p99: at(0.99).copied().unwrap_or_default(),
            mean: total / n as u32,
            n: samples.len(),
        }
    }
}

/// Results of one allocator.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorResult {
    /// Instantiate only.
    pub instantiate: Percentiles,
    /// Whole request in-process.
    pub request: Percentiles,
}

/// Results of a run.
#[derive(Debug, Clone)]
pub struct ColdStartReport {
    /// Compile with an empty cache.
    pub compile: Duration,
    /// Load from the cache (median of several starts).
    pub cache_load: Duration,
    /// Pooling allocator.
    pub pooling: AllocatorResult,
    /// On-demand allocator.
    pub on_demand: AllocatorResult,
    /// `App::load` with a warm cache (median of several).
    pub cached_start: Duration,
    /// First HTTP request on a freshly started server (median of several starts).
    pub first_request: Duration,
    /// Starts measured for the medians above.
    pub starts: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Writes a one-component manifest next to `component` for the app-level measures.
fn write_manifest(dir: &Path, component: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("spin.toml");
    let source = component
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    std::fs::write(
        &path,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"bench\"\n\
             [component.bench]\nsource = \"{source}\"\n"
        ),
    )?;
    Ok(path)
}

async fn measure_allocator(
    allocator: Allocator,
    cache: &Path,
    component: &Path,
    requests: usize,
) -> anyhow::Result<AllocatorResult> {
    let runtime = Runtime::new(RuntimeConfig {
        allocator,
        cache_dir: Some(cache.to_owned()),
        ..RuntimeConfig::default()
    })?;
    let loaded = runtime.load("bench", component)?;
    let context = Arc::new(instance::ComponentContext {
        id: "bench".into(),
        variables: Default::default(),
        allowed_hosts: Default::default(),
        key_value: None,
        redis: Arc::new(crate::redis_pool::RedisPool::new()),
        environment: Vec::new(),
    });
    // Warm up: first instantiations fault in pool pages and code.
    for _ in 0..200 {
        let mut store =
            wasmtime::Store::new(runtime.engine(), RequestState::new(Arc::clone(&context)));
        store.set_epoch_deadline(u64::MAX / 2);
        loaded.pre.instantiate_async(&mut store).await?;
    }
    let mut instantiate = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let mut store =
            wasmtime::Store::new(runtime.engine(), RequestState::new(Arc::clone(&context)));
        store.set_epoch_deadline(u64::MAX / 2);
        let _service = loaded.pre.instantiate_async(&mut store).await?;
        instantiate.push(started.elapsed());
    }
    let mut request = Vec::with_capacity(requests);
    for _ in 0..requests {
        let req = http::Request::builder()
            .uri("http://bench.local/")
            .body(Full::new(Bytes::new()))?;
        let started = Instant::now();
        let answer = instance::serve(
            &loaded.pre,
            Arc::clone(&context),
            req,
            Duration::from_secs(10),
        )
        .await
        .map_err(|f| anyhow::anyhow!("bench request failed: {f:?}"))?;
        request.push(started.elapsed());
        anyhow::ensure!(
            answer.parts.status.is_success(),
            "bench component answered {}",
            answer.parts.status
        );
    }
    Ok(AllocatorResult {
        instantiate: Percentiles::of(instantiate),
        request: Percentiles::of(request),
    })
}

/// One GET over a new TCP connection; returns the status code and body.
///
/// A deliberately tiny HTTP/1.1 client (the bench and tests need no more), so the
/// measurement includes nothing but a connect, the request and the response.
///
/// # Errors
/// On I/O errors or a malformed response.
pub async fn http_request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut stream = TcpStream::connect(address).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line `{status_line}`"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

/// Runs the cold-start benchmark.
///
/// # Errors
/// When the component cannot be loaded or a request fails.
pub async fn cold_start(options: &ColdStartOptions) -> anyhow::Result<ColdStartReport> {
    let scratch = tempfile_dir()?;
    let cache = scratch.join("cache");
    let component = std::fs::canonicalize(&options.component)?;

    // Compile: a fresh engine with an empty cache directory.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::default()
    })?;
    let compile = runtime.load("bench", &component)?.load_time;
    drop(runtime);

    // Cache loads: new engines (as new processes would have) on the warm cache.
    let starts = 5;
    let mut loads = Vec::new();
    for _ in 0..starts {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        })?;
        loads.push(runtime.load("bench", &component)?.load_time);
    }

    let pooling =
        measure_allocator(Allocator::Pooling, &cache, &component, options.requests).await?;
    let on_demand =
        measure_allocator(Allocator::OnDemand, &cache, &component, options.requests).await?;

    // First request after a cached start, over real HTTP.
    let manifest = write_manifest(&scratch, &component)?;
    let mut config = AppConfig::new(&manifest);
    config.runtime.cache_dir = Some(cache.clone());
    let mut start_times = Vec::new();
    let mut first_requests = Vec::new();
    for _ in 0..starts {
        let started = Instant::now();
        let app = Arc::new(App::load(&config)?);
        start_times.push(started.elapsed());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::run(app, listener, async {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        let (status, _, _) = http_request(address, "GET", "/", b"").await?;
        first_requests.push(started.elapsed());
        anyhow::ensure!(status == 200, "first request answered {status}");
        let _ = stop.send(());
        server.await??;
    }
    let _ = std::fs::remove_dir_all(&scratch);

    Ok(ColdStartReport {
        compile,
        cache_load: median(loads),
        pooling,
        on_demand,
        cached_start: median(start_times),
        first_request: median(first_requests),
        starts,
    })
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "flashcart-bench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl ColdStartReport {
    /// The report as a Markdown table (what `docs/benchmarks.md` records).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
            }
        };
        out.push_str("| measure | pooling | on-demand | on-demand / pooling |\n");
        out.push_str("| --- | --- | --- | --- |\n");
        let p = &self.pooling;
        let o = &self.on_demand;
        out.push_str(&format!(
            "| instantiate p50 (n={}) | {} | {} | {} |\n",
            p.instantiate.n,
            us(p.instantiate.p50),
            us(o.instantiate.p50),
            ratio(o.instantiate.p50, p.instantiate.p50)
        ));
        out.push_str(&format!(
            "| instantiate p99 | {} | {} | {} |\n",
            us(p.instantiate.p99),
            us(o.instantiate.p99),
            ratio(o.instantiate.p99, p.instantiate.p99)
        ));
        out.push_str(&format!(
            "| instantiate mean | {} | {} | {} |\n",
            us(p.instantiate.mean),
            us(o.instantiate.mean),
            ratio(o.instantiate.mean, p.instantiate.mean)
        ));
        out.push_str(&format!(
            "| whole request in-process p50 | {} | {} | {} |\n",
            us(p.request.p50),
            us(o.request.p50),
            ratio(o.request.p50, p.request.p50)
        ));
        out.push_str(&format!(
            "| whole request in-process p99 | {} | {} | {} |\n",
            us(p.request.p99),
            us(o.request.p99),
            ratio(o.request.p99, p.request.p99)
        ));
        out.push('\n');
        out.push_str("| start-up measure | value |\n| --- | --- |\n");
        out.push_str(&format!(
            "| compile (empty cache) | {} |\n",
            ms(self.compile)
        ));
        out.push_str(&format!(
            "| load from cache (median of {}) | {} |\n",
            self.starts,
            ms(self.cache_load)
        ));
        out.push_str(&format!(
            "| compile / cache load | {} |\n",
            ratio(self.compile, self.cache_load)
        ));
        out.push_str(&format!(
            "| app start with warm cache (median of {}) | {} |\n",
            self.starts,
            ms(self.cached_start)
        ));
        out.push_str(&format!(
            "| first HTTP request after a cached start (median of {}) | {} |\n",
            self.starts,
            ms(self.first_request)
        ));
        out
    }
}
