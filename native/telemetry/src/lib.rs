//! flashcart-telemetry: the Prometheus metrics of a flashcart process, one recorder for all
//! of it.
//!
//! `flashcart up` runs the edge host and settlement in one process, and the `metrics` crate
//! allows one global recorder per process: whoever installed it first would own every
//! metric, and the other's would record nowhere. So neither installs its own; both register
//! through this crate, and one scrape of either listener shows both sets.
//!
//! Parts:
//! - [`Registry`]: where handles are registered and rendered from — the process's recorder
//!   ([`Registry::process`], installed on first use with an upkeep thread), or one of its
//!   own ([`Registry::own`]) for a service that must count apart from the rest of its
//!   process (several settlements in one test binary).
//! - [`serve`]: the operator listener, `GET /metrics` and `GET /health`, on hyper.
//! - [`BUCKETS`]: the latency buckets every histogram uses.
//! - [`series_value`]: one series' value read back from a rendered scrape.
#![deny(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;

/// Latency buckets (seconds) from 10 µs to 10 s, for every histogram: instantiation sits at
/// the bottom, request deadlines and slow settlement batches at the top.
pub const BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the process recorder's histogram samples are folded into their buckets.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The health check's paths: `/health` for settlement's probes and Kubernetes, and the
/// host's own `/.well-known/flashcart/health`.
pub const HEALTH_PATHS: [&str; 2] = ["/health", "/.well-known/flashcart/health"];

/// What an embedding program's recorder renders here: it owns the metrics, not us.
const FOREIGN_RECORDER: &str = "# metrics recorder owned by the embedding program\n";

static PROCESS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("the bucket list is not empty")
}

/// Where metrics are registered and rendered from.
#[derive(Clone)]
pub struct Registry {
    scope: Scope,
}

#[derive(Clone)]
enum Scope {
    /// The process's global recorder; `None` when the embedding program installed another.
    Process(Option<PrometheusHandle>),
    /// A recorder of its own, never installed.
    Own(Arc<PrometheusRecorder>, PrometheusHandle),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.scope {
            Scope::Process(_) => "Registry::process",
            Scope::Own(..) => "Registry::own",
        })
    }
}

impl Registry {
    /// The process's registry: the global recorder, installed on the first call.
    ///
    /// The recorder keeps every histogram sample (a value and its time, 24 bytes) until an
    /// upkeep folds it into buckets. Without one, a node nobody scrapes grows by that much
    /// for every request and Redis command — about 1 GB an hour at 5 000 deducts/s — so the
    /// first call starts a thread that runs the upkeep every [`UPKEEP_PERIOD`] for the life
    /// of the process.
    ///
    /// When the embedding program installed a recorder of its own first, handles registered
    /// here go to that recorder and [`Registry::render`] says so.
    pub fn process() -> Self {
        let handle = PROCESS
            .get_or_init(|| {
                let handle = builder().install_recorder().ok()?;
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("flashcart-metrics".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_PERIOD);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until scraped");
                }
                Some(handle)
            })
            .clone();
        Self {
            scope: Scope::Process(handle),
        }
    }

    /// A registry of its own, apart from the process's: what is registered here is rendered
    /// only here. Its owner runs [`Registry::upkeep`] now and then (settlement does, every
    /// maintenance pass); [`Registry::render`] does too.
    pub fn own() -> Self {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        Self {
            scope: Scope::Own(Arc::new(recorder), handle),
        }
    }

    /// Runs `register` with this registry as the recorder, so the `metrics::counter!`,
    /// `gauge!`, `histogram!` and `describe_*!` macros inside it register here. The handles
    /// they return keep recording here wherever they are used afterwards: register once,
    /// then only record.
    pub fn register<T>(&self, register: impl FnOnce() -> T) -> T {
        match &self.scope {
            Scope::Process(_) => register(),
            Scope::Own(recorder, _) => metrics::with_local_recorder(recorder.as_ref(), register),
        }
    }

    /// Folds recorded histogram samples into their buckets.
    pub fn upkeep(&self) {
        if let Some(handle) = self.handle() {
            handle.run_upkeep();
        }
    }

    /// The metrics in the Prometheus text exposition format (after an upkeep).
    pub fn render(&self) -> String {
        match self.handle() {
            Some(handle) => {
                handle.run_upkeep();
                handle.render()
            }
            None => FOREIGN_RECORDER.to_owned(),
        }
    }

    fn handle(&self) -> Option<&PrometheusHandle> {
        match &self.scope {
            Scope::Process(handle) => handle.as_ref(),
            Scope::Own(_, handle) => Some(handle),
        }
    }
}

/// How long a client of the operator listener has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `registry` on `listener` until `shutdown`: `GET /metrics` (Prometheus text),
/// [`HEALTH_PATHS`] (200 `ok` while `healthy()` says so, else 503 `stalled`), 404 for
/// anything else. One request per connection: a scrape every few seconds gains nothing from
/// keep-alive, and a closed connection is what the simplest probe expects.
///
/// # Errors
/// When the listener's address cannot be read.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    healthy: impl Fn() -> bool + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /metrics");
    let registry = Arc::new(registry);
    let healthy = Arc::new(healthy);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, or a peer gone before accept: neither ends the
                    // listener, and neither may turn it into a busy loop.
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (registry, healthy) = (Arc::clone(&registry), Arc::clone(&healthy));
        let service = service_fn(move |req: Request<Incoming>| {
            let response = answer(req.uri().path(), &registry, healthy.as_ref());
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to `GET path` on the operator listener.
fn answer(path: &str, registry: &Registry, healthy: &dyn Fn() -> bool) -> Response<Full<Bytes>> {
    if path == "/metrics" {
        return metrics_response(registry);
    }
    if HEALTH_PATHS.contains(&path) {
        return if healthy() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "stalled\n")
        };
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `registry` rendered as a 200 with the exposition format's content type.
pub fn metrics_response(registry: &Registry) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(registry.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The value of one series in a scrape in the Prometheus text format: `series` is the name
/// with its labels as rendered, e.g. `flashcart_settle_events_applied_total` or
/// `flashcart_requests_total{component="deduct",status="201"}`. `None` when the scrape has no
/// such series.
pub fn series_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_registry_renders_only_what_was_registered_in_it() {
        let (a, b) = (Registry::own(), Registry::own());
        let counter = a.register(|| {
            metrics::describe_counter!("fc_test_things_total", "Things.");
            metrics::counter!("fc_test_things_total")
        });
        let seconds = a.register(|| metrics::histogram!("fc_test_seconds"));
        // Recorded outside the closure: the handle stays bound to `a`.
        counter.increment(3);
        seconds.record(0.003);
        let text = a.render();
        assert!(
            text.contains("# HELP fc_test_things_total Things.\n"),
            "{text}"
        );
        assert!(text.contains("fc_test_things_total 3\n"), "{text}");
        assert!(
            text.contains("fc_test_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("fc_test_seconds_count 1\n"), "{text}");
        assert!(!b.render().contains("fc_test"), "b holds nothing of a's");
    }

    #[tokio::test]
    async fn the_listener_answers_metrics_health_and_404() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let registry = Registry::own();
        registry
            .register(|| metrics::gauge!("fc_test_level"))
            .set(7.0);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            registry,
            move || flag.load(std::sync::atomic::Ordering::Relaxed),
            async {
                let _ = stopped.await;
            },
        ));
        // HTTP/1.1 without `connection: close`: the listener closes after one answer anyway.
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("fc_test_level 7\n"), "{metrics}");
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let stalled = get("/.well-known/flashcart/health").await;
        assert!(stalled.starts_with("HTTP/1.1 503"), "{stalled}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.expect("join").expect("served");
    }
}
