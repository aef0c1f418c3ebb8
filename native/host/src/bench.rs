//! `flashcart bench cold-start`: what a cold start and a request's instance cost.
//!
//! Two ways in:
//! - [`cold_start`], for one `.wasm` file served on every path (the `hello` test component):
//!   compile time (empty cache) and cache-load time (the next start); per-request
//!   instantiation (a new `Store` + instantiate from the `InstancePre`), p50/p99 over many
//!   requests, with the pooling and the on-demand allocator; a whole request in-process
//!   (instantiate + handle + collect the response); the first request over real HTTP after
//!   a cached start, and the start itself; the memory one instance holds.
//! - [`measure_component`], for one component of a manifest *as deployed*: loaded the way
//!   `flashcart up` loads it (its variables, key-value store and Redis), sent [`Probe`]s —
//!   real requests its caller prepared, each of which must answer the expected status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{App, AppConfig};
use crate::instance::{self, ComponentContext, MemoryUse, RequestState};
use crate::manifest::Manifest;
use crate::runtime::{Allocator, Runtime, RuntimeConfig};
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct ColdStartOptions {
    /// The component to measure (a WASI 0.3 HTTP handler).
    pub component: PathBuf,
    /// Instantiations per allocator.
    pub requests: usize,
    /// Cached starts (and cache loads) whose medians are reported.
    pub starts: usize,
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
    /// What one instance's memories and tables hold after serving its first request
    /// (pooling allocator, in-process).
    pub memory: MemoryUse,
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

/// What a single `.wasm` gets: no variables, no stores, no outbound hosts.
fn bare_context() -> Arc<ComponentContext> {
    Arc::new(ComponentContext {
        id: "bench".into(),
        variables: Default::default(),
        allowed_hosts: Default::default(),
        key_value: None,
        redis: Arc::new(crate::redis_pool::RedisPool::new()),
        environment: Vec::new(),
        max_memory_bytes: crate::runtime::RuntimeConfig::default().max_memory_bytes,
    })
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
    let context = bare_context();
    // Warm up: first instantiations fault in pool pages and code.
    for _ in 0..200 {
        let mut store = instance::new_store(runtime.engine(), Arc::clone(&context));
        store.set_epoch_deadline(u64::MAX / 2);
        loaded.pre.instantiate_async(&mut store).await?;
    }
    let mut instantiate = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let mut store = instance::new_store(runtime.engine(), Arc::clone(&context));
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

/// The memory one instance of `pre` holds after serving `request`, and its answer: a new
/// store whose [`wasmtime::ResourceLimiter`] counts every memory and table the instance
/// creates and every growth while it serves.
async fn measure_memory(
    pre: &ServicePre<RequestState>,
    context: Arc<ComponentContext>,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> anyhow::Result<(MemoryUse, instance::Answer)> {
    let mut store = instance::request_store(pre, context, timeout);
    let answer = instance::serve_on(&mut store, pre, request, timeout)
        .await
        .map_err(|f| anyhow::anyhow!("in-process request failed: {f:?}"))?;
    Ok((store.data().limits.used, answer))
}

/// One request over a new TCP connection; returns the status code, headers and body.
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
    http_exchange(address, method, path, &[], body).await
}

/// [`http_request`] with more header lines (`name`, `value`).
///
/// # Errors
/// On I/O errors or a malformed response.
pub async fn http_exchange(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut stream = TcpStream::connect(address).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
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
    let starts = options.starts.max(1);
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
    let memory = {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        })?;
        let loaded = runtime.load("bench", &component)?;
        let context = bare_context();
        let request = http::Request::builder()
            .uri("http://bench.local/")
            .body(Full::new(Bytes::new()))?;
        let (memory, answer) =
            measure_memory(&loaded.pre, context, request, Duration::from_secs(10)).await?;
        anyhow::ensure!(
            answer.parts.status.is_success(),
            "bench component answered {}",
            answer.parts.status
        );
        memory
    };
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
        memory,
    })
}

/// A new scratch directory under the system's temp dir (the bench removes it when done).
fn tempfile_dir() -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "flashcart-bench-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A real request for one component, prepared by the caller (fresh ids, a valid signature):
/// the deployed-component bench sends each one once and requires its expected status.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Header lines besides `host`, `content-length` and `connection`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Probe {
    /// A request with no headers and no body.
    pub fn new(method: http::Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header line.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets a JSON body (and its content type).
    #[must_use]
    pub fn json(self, body: Vec<u8>) -> Self {
        let mut probe = self.header("content-type", "application/json");
        probe.body = body;
        probe
    }

    fn to_http(&self) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let mut request = http::Request::builder()
            .method(self.method.clone())
            .uri(format!("http://bench.local{}", self.path));
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        Ok(request.body(Full::new(Bytes::from(self.body.clone())))?)
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// One component of a manifest to measure as deployed.
#[derive(Debug, Clone)]
pub struct ComponentBench {
    /// The application as `flashcart up` would load it (manifest, variables, runtime
    /// config); its cache directory and component list are replaced by the bench's own.
    pub app: AppConfig,
    /// The component's id in the manifest.
    pub component: String,
    /// The status every probe must answer.
    pub expect: u16,
    /// At least `starts + 1` requests, each sent once: one per cached start, then one on an
    /// instance whose memory is counted.
    pub probes: Vec<Probe>,
    /// Timed instantiations (after a warm-up of up to 200).
    pub instantiations: usize,
    /// Cached starts (and cache loads) whose medians are reported.
    pub starts: usize,
}

/// What one component of a manifest costs to start and to instantiate, as deployed.
#[derive(Debug, Clone)]
pub struct ComponentFigures {
    /// The component's id.
    pub component: String,
    /// Its `.wasm` file.
    pub source: PathBuf,
    /// `Component::from_binary` with an empty compiled-code cache.
    pub compile: Duration,
    /// The same in a new engine on the warm cache (median of `starts`).
    pub cache_load: Duration,
    /// From connect to the whole response, the first request to an app started on the warm
    /// cache (median of `starts` starts, each a new app: new instances, new Redis
    /// connection, new key-value store unless the runtime config keeps one on disk).
    pub first_request: Duration,
    /// `Store::new` + instantiate from the pre-instance, pooling allocator, as `flashcart up`
    /// does for a new instance.
    pub instantiate: Percentiles,
    /// What one instance holds after serving one probe in-process.
    pub memory: MemoryUse,
    /// Cached starts measured.
    pub starts: usize,
}

fn failed_probe(id: &str, probe: &Probe, expect: u16, status: u16, body: &[u8]) -> anyhow::Error {
    anyhow::anyhow!(
        "component `{id}`: {probe} answered {status}, not {expect}; body: {}",
        String::from_utf8_lossy(&body[..body.len().min(2048)])
    )
}

/// Measures one component of a manifest as `flashcart up` deploys it: compile (empty
/// cache), cache load, the first request after each of `starts` cached starts over real
/// HTTP (an app of this component alone, so its figures do not move when another component
/// changes), instantiation percentiles and the memory of one instance.
///
/// # Errors
/// When the component cannot be loaded, or a probe fails or answers another status than
/// `expect` (the message names the component, the request, the status and the body).
pub async fn measure_component(bench: ComponentBench) -> anyhow::Result<ComponentFigures> {
    let id = bench.component.as_str();
    anyhow::ensure!(bench.starts >= 1, "at least one start");
    anyhow::ensure!(
        bench.probes.len() > bench.starts,
        "component `{id}`: {} probes for {} starts and the memory request",
        bench.probes.len(),
        bench.starts
    );
    let manifest = Manifest::load(&bench.app.manifest)?;
    let decl = manifest.components.get(id).ok_or_else(|| {
        anyhow::anyhow!("no component `{id}` in {}", bench.app.manifest.display())
    })?;
    let source = decl.source_path(&manifest.base_dir);
    let scratch = tempfile_dir()?;
    let measured = measure_in(&bench, &source, &scratch.join("cache")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (compile, cache_load, first_request, instantiate, memory) = measured?;
    Ok(ComponentFigures {
        component: id.to_owned(),
        source,
        compile,
        cache_load,
        first_request,
        instantiate,
        memory,
        starts: bench.starts,
    })
}

type Measured = (Duration, Duration, Duration, Percentiles, MemoryUse);

async fn measure_in(
    bench: &ComponentBench,
    source: &Path,
    cache: &Path,
) -> anyhow::Result<Measured> {
    let id = bench.component.as_str();
    let engine_config = RuntimeConfig {
        cache_dir: Some(cache.to_owned()),
        ..bench.app.runtime.clone()
    };
    // Compile into an empty cache, then load from it in new engines, as new processes would.
    let compile = Runtime::new(engine_config.clone())?
        .load(id, source)?
        .load_time;
    let mut loads = Vec::with_capacity(bench.starts);
    for _ in 0..bench.starts {
        loads.push(
            Runtime::new(engine_config.clone())?
                .load(id, source)?
                .load_time,
        );
    }

    let mut config = bench.app.clone();
    config.runtime = engine_config;
    config.components = Some(vec![id.to_owned()]);
    let mut probes = bench.probes.iter();
    let mut first_requests = Vec::with_capacity(bench.starts);
    let mut app = None;
    for _ in 0..bench.starts {
        let probe = probes.next().expect("counted above");
        let started_app = Arc::new(App::load(&config)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::run(
            Arc::clone(&started_app),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let started = Instant::now();
        let answer = http_exchange(
            address,
            probe.method.as_str(),
            &probe.path,
            &probe.headers,
            &probe.body,
        )
        .await;
        let took = started.elapsed();
        let _ = stop.send(());
        server.await??;
        let (status, _, body) =
            answer.map_err(|e| anyhow::anyhow!("component `{id}`: {probe}: {e:#}"))?;
        if status != bench.expect {
            return Err(failed_probe(id, probe, bench.expect, status, &body));
        }
        first_requests.push(took);
        app = Some(started_app);
    }
    let app = app.expect("at least one start");
    let component = app
        .components()
        .first()
        .ok_or_else(|| anyhow::anyhow!("component `{id}` was not loaded"))?;

    // New instances from the pre-instance, as the host makes one for a request.
    let context = || Arc::clone(&component.context);
    for _ in 0..bench.instantiations.min(200) {
        let mut store = instance::new_store(component.pre.engine(), context());
        store.set_epoch_deadline(u64::MAX / 2);
        component.pre.instantiate_async(&mut store).await?;
    }
    let mut instantiate = Vec::with_capacity(bench.instantiations);
    for _ in 0..bench.instantiations {
        let started = Instant::now();
        let mut store = instance::new_store(component.pre.engine(), context());
        store.set_epoch_deadline(u64::MAX / 2);
        let _service = component.pre.instantiate_async(&mut store).await?;
        instantiate.push(started.elapsed());
    }

    let probe = probes.next().expect("counted above");
    let (memory, answer) = measure_memory(
        &component.pre,
        Arc::clone(&component.context),
        probe.to_http()?,
        app.request_timeout(),
    )
    .await
    .map_err(|e| e.context(format!("component `{id}`: {probe}")))?;
    if answer.parts.status.as_u16() != bench.expect {
        return Err(failed_probe(
            id,
            probe,
            bench.expect,
            answer.parts.status.as_u16(),
            &answer.body,
        ));
    }
    Ok((
        compile,
        median(loads),
        median(first_requests),
        Percentiles::of(instantiate),
        memory,
    ))
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
        out.push_str(&format!(
            "| memory per instance (linear memory after its first request; table elements) | {} KiB; {} |\n",
            self.memory.linear_bytes / 1024,
            self.memory.table_elements
        ));
        out
    }
}
