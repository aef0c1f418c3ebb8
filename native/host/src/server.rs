//! Serving HTTP: hyper 1 on tokio, one fresh instance per request.
//!
//! [`run`] takes the listener and a shutdown future, so `flashcart up` and the tests
//! drive the same code. On shutdown it stops accepting, lets in-flight requests finish
//! (bounded by the request deadline) and returns.
//!
//! The host answers two paths itself, under Spin's reserved `/.well-known/` prefix so
//! they never shadow an application route: `/.well-known/flashcart/health` and
//! `/.well-known/flashcart/metrics`. [`run_metrics`] serves the same metrics as
//! `/metrics` on a separate (operator-only) listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use flashcart_core::ids::RequestId;

use crate::app::App;
use crate::instance::Failure;
use crate::problem::problem;
use crate::telemetry::{self, ComponentMetrics};

/// Path of the host's health check.
pub const HEALTH_PATH: &str = "/.well-known/flashcart/health";
/// Path of the host's metrics on the application listener.
pub const METRICS_PATH: &str = "/.well-known/flashcart/metrics";

// What Spin tells a component about the request and its route, one header each. Named
// once: building a header name from a string per request showed in the host's profile.
const SPIN_FULL_URL: http::HeaderName = http::HeaderName::from_static("spin-full-url");
const SPIN_PATH_INFO: http::HeaderName = http::HeaderName::from_static("spin-path-info");
const SPIN_MATCHED_ROUTE: http::HeaderName = http::HeaderName::from_static("spin-matched-route");
const SPIN_RAW_COMPONENT_ROUTE: http::HeaderName =
    http::HeaderName::from_static("spin-raw-component-route");
const SPIN_COMPONENT_ROUTE: http::HeaderName =
    http::HeaderName::from_static("spin-component-route");
const SPIN_BASE_PATH: http::HeaderName = http::HeaderName::from_static("spin-base-path");
const SPIN_CLIENT_ADDR: http::HeaderName = http::HeaderName::from_static("spin-client-addr");
/// The request's id, given to the component (which writes it into the event its decision
/// appends) and answered to the caller.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(RequestId::HEADER);
/// Where a component says its answer came from (counted by `ComponentMetrics::record`).
const FLASHCART_CACHE: http::HeaderName = http::HeaderName::from_static("flashcart-cache");

/// Sets `name` to `value`, replacing what the client sent under that name; a value that is
/// not a valid header value (it came from the request itself) is left out.
fn set_header(headers: &mut http::HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// How long shutdown waits for open connections after the last request deadline.
const DRAIN_SLACK: Duration = Duration::from_secs(2);

struct Shared {
    app: Arc<App>,
    /// Each component's request metrics, by its index in the app; registered by the first
    /// request (after the recorder is installed).
    metrics: Vec<OnceLock<ComponentMetrics>>,
    /// Caps concurrent instances at the pool size, so a burst waits for a slot rather
    /// than failing to allocate one.
    slots: Semaphore,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
///
/// # Errors
/// Only when accepting fails in a way that is not per-connection (the listener is
/// broken); per-connection and per-request failures are logged and answered.
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    telemetry::install();
    let slots = app.runtime().config().max_instances as usize;
    let shared = Arc::new(Shared {
        metrics: app.components().iter().map(|_| OnceLock::new()).collect(),
        app,
        slots: Semaphore::new(slots),
    });
    let local = listener.local_addr()?;
    let limits = shared.app.connections();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tracing::info!(address = %local, app = %shared.app.name(), "serving");
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        // A connection slot first: at the cap the listener stops accepting and new
        // clients wait in the kernel's backlog instead of costing a file descriptor.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.reset();
                    pair
                }
                Err(e) => {
                    // Per-connection errors (the peer reset before accept) and running out
                    // of file descriptors must not stop the server, nor spin it: back off,
                    // doubling up to a second, and say so once per episode.
                    let pause = backoff.next(&e);
                    drop(permit);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let service = service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, req, peer, local).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let drain = shared.app.request_timeout() + DRAIN_SLACK;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves Prometheus `/metrics` (and the health check) on `listener` until `shutdown`: the
/// process's metrics, so inside `flashcart up` settlement's as well as the host's.
///
/// # Errors
/// When the listener's address cannot be read.
pub async fn run_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    flashcart_telemetry::serve(listener, telemetry::install(), || true, shutdown).await
}

fn metrics_response() -> Response<Full<Bytes>> {
    flashcart_telemetry::metrics_response(&telemetry::install())
}

/// A process-unique request id: a per-process prefix (start time) and a counter.
fn next_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or_default();
        nanos ^ std::process::id()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}-{n:08x}")
}

/// The request's id: the caller's `x-request-id` when it is a valid [`RequestId`] (so a
/// gateway's id follows the request into the ledger), else a new one. An invalid id is
/// replaced, not refused: tracing must never cost a buyer their request.
fn request_id_of(req: &Request<Incoming>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| RequestId::parse(value).ok())
        .map_or_else(next_request_id, String::from)
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let request_id = request_id_of(&req);
    // The access log is off the hot path: one line per request at info level cost more
    // than the request itself under load. `FLASHCART_LOG=flashcart_host=debug` shows it.
    let span = tracing::debug_span!(
        "request",
        id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    async {
        let started = Instant::now();
        let mut response = dispatch(shared, req, peer, local, &request_id).await;
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        tracing::debug!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "answered"
        );
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let app = &shared.app;
    let path = req.uri().path().to_owned();
    match path.as_str() {
        HEALTH_PATH => {
            let mut r = Response::new(Full::new(Bytes::from(format!(
                "{{\"status\":\"ok\",\"app\":{}}}",
                serde_json::Value::String(app.name().to_owned())
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        METRICS_PATH => return metrics_response(),
        _ => {}
    }

    let Some(matched) = app.route(&path) else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "No route matches",
            format!("no component serves {path}"),
            request_id,
        );
    };
    let component = &app.components()[*matched.target];
    let id = &component.context.id;
    let component_metrics =
        shared.metrics[*matched.target].get_or_init(|| ComponentMetrics::new(id));

    let (mut parts, body) = req.into_parts();
    let limit = app.max_body_bytes();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit, request_id);
    }
    // Bodies are read whole before the component starts: flashcart requests are small
    // JSON documents, and a limit enforced here answers 413 without spending an
    // instance on a request that will be refused. A request that declares no body (a GET)
    // has nothing to wait for, and no read timer is set.
    let body = if body.is_end_stream() {
        Bytes::new()
    } else {
        match read_body(body, limit, app.connections().body_read_timeout, request_id).await {
            Ok(body) => body,
            Err(refusal) => return *refusal,
        }
    };

    // What Spin tells a component about the request and its route.
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| local.to_string());
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let full_url = format!("http://{authority}{path_and_query}");
    let headers = &mut parts.headers;
    set_header(headers, SPIN_FULL_URL, &full_url);
    set_header(headers, SPIN_PATH_INFO, &matched.path_info);
    set_header(headers, SPIN_MATCHED_ROUTE, matched.route);
    set_header(headers, SPIN_RAW_COMPONENT_ROUTE, matched.route);
    set_header(headers, SPIN_COMPONENT_ROUTE, &matched.component_route);
    headers.insert(SPIN_BASE_PATH, HeaderValue::from_static("/"));
    set_header(headers, SPIN_CLIENT_ADDR, &peer.to_string());
    set_header(headers, REQUEST_ID, request_id);
    for (name, value) in &matched.params {
        if let Ok(name) = http::HeaderName::from_bytes(format!("spin-path-match-{name}").as_bytes())
        {
            set_header(headers, name, value);
        }
    }
    parts.uri = match full_url.parse() {
        Ok(uri) => uri,
        Err(_) => parts.uri,
    };
    let request = Request::from_parts(parts, Full::new(body));

    let _slot = shared.slots.acquire().await;
    let _in_flight = InFlight::enter();
    let started = Instant::now();
    let outcome = component.handler.handle(request).await;
    let took = started.elapsed().as_secs_f64();

    let response = match outcome {
        Ok(answer) => Response::from_parts(answer.parts, Full::new(answer.body)),
        Err(Failure::Timeout(limit)) => {
            tracing::warn!(request = %request_id, component = %id, ?limit, "component stopped at its deadline");
            problem(
                StatusCode::GATEWAY_TIMEOUT,
                "component-timeout",
                "The component did not answer in time",
                format!("component `{id}` ran past its {limit:?} deadline and was stopped"),
                request_id,
            )
        }
        Err(Failure::Trap(message)) => {
            tracing::error!(request = %request_id, component = %id, error = %message, "component failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "component-failed",
                "The component failed",
                format!(
                    "component `{id}` failed; the host log has the cause under this request id"
                ),
                request_id,
            )
        }
        Err(Failure::Unavailable(message)) => {
            tracing::error!(request = %request_id, component = %id, error = %message, "no instance for the request");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "instance-unavailable",
                "No instance could serve the request",
                format!("component `{id}` could not be instantiated; retry shortly"),
                request_id,
            )
        }
        Err(Failure::ErrorCode(code)) => {
            tracing::warn!(request = %request_id, component = %id, code = %code, "component answered an error code");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "component-error",
                "The component answered with an error",
                format!("component `{id}` returned {code}"),
                request_id,
            )
        }
    };
    let cache = response.headers().get(FLASHCART_CACHE);
    component_metrics.record(
        took,
        response.status().as_u16(),
        cache.map(HeaderValue::as_bytes),
    );
    response
}

/// Counts a request in `flashcart_in_flight_requests` while it runs. A guard, not a
/// pair of calls: hyper drops the request future when the client goes away, and the
/// gauge must come down then too. The gauge is looked up once per process.
struct InFlight(&'static metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
        let gauge = GAUGE.get_or_init(|| metrics::gauge!("flashcart_in_flight_requests"));
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Reads a request body whole, within `limit` bytes and `timeout`; a refusal is the answer.
async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
    request_id: &str,
) -> Result<Bytes, Box<Response<Full<Bytes>>>> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect());
    match read.await {
        Err(_) => Err(Box::new(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "The request body was not sent in time",
            format!("the body must arrive within {timeout:?} of the request header"),
            request_id,
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Box::new(too_large(limit, request_id)))
        }
        Ok(Err(e)) => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "The request body could not be read",
            e.to_string(),
            request_id,
        ))),
    }
}

fn too_large(limit: usize, request_id: &str) -> Response<Full<Bytes>> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "The request body is too large",
        format!("bodies are limited to {limit} bytes"),
        request_id,
    )
}

/// Pauses after failed accepts: 10 ms doubling to 1 s while they keep failing, so running
/// out of file descriptors neither stops the server nor turns it into a busy loop.
#[derive(Debug, Default)]
struct AcceptBackoff {
    current: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self, error: &std::io::Error) -> Duration {
        let pause = match self.current {
            None => {
                tracing::warn!(%error, "accept failed; backing off until it succeeds again");
                Self::FIRST
            }
            Some(previous) => (previous * 2).min(Self::MAX),
        };
        self.current = Some(pause);
        metrics::counter!("flashcart_accept_errors_total").increment(1);
        pause
    }

    fn reset(&mut self) {
        if self.current.take().is_some() {
            tracing::info!("accepting again");
        }
    }
}
