//! One request's instance: its `Store` data and running the handler to a response.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::key_value::KeyValueStore;
use crate::outbound::AllowedHosts;
use crate::redis_pool::RedisPool;
use crate::runtime::EPOCH_TICK;
use crate::variables::Value;

/// What every instance of one component shares: resolved at load, read per request.
#[derive(Debug)]
pub struct ComponentContext {
    /// The component id.
    pub id: String,
    /// Component variables, rendered.
    pub variables: BTreeMap<String, Value>,
    /// Rendered `allowed_outbound_hosts`.
    pub allowed_hosts: AllowedHosts,
    /// The `default` store, if the component lists it in `key_value_stores`.
    pub key_value: Option<KeyValueStore>,
    /// The node's Redis clients.
    pub redis: Arc<RedisPool>,
    /// `environment` from the manifest plus `--env`.
    pub environment: Vec<(String, String)>,
    /// Largest linear memory an instance may grow to, in bytes (`--max-memory-mb`).
    pub max_memory_bytes: usize,
}

/// The data of one request's `Store`.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutboundHttp,
    pub(crate) table: ResourceTable,
    pub(crate) component: Arc<ComponentContext>,
    /// The store's limiter: the memory cap, and what the instance grew to.
    pub(crate) limits: Limits,
}

/// A store's [`wasmtime::ResourceLimiter`]. It refuses to grow a linear memory past
/// `max_memory_bytes`: the pooling allocator refuses that too, but the on-demand one would
/// let a memory move and grow without end. It also counts what the instance's memories and
/// tables grew to, which `flashcart bench cold-start` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    max_memory_bytes: usize,
    pub(crate) used: MemoryUse,
}

/// What one instance's linear memories and tables hold: the sizes wasmtime asks a
/// [`wasmtime::ResourceLimiter`] about when it creates them (their declared minimum) and each
/// time the guest grows them. Logical sizes in wasm pages, not resident memory: a page the
/// guest never touches costs no RAM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes of linear memory, all of the instance's memories together.
    pub linear_bytes: u64,
    /// Table elements, all of the instance's tables together.
    pub table_elements: u64,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            // The guest's `memory.grow` returns -1: its allocation fails, the node goes on.
            return Ok(false);
        }
        // A growth past the memory's own maximum fails after this call: not counted.
        if maximum.is_none_or(|max| desired <= max) {
            self.used.linear_bytes += desired.saturating_sub(current) as u64;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_none_or(|max| desired <= max) {
            self.used.table_elements += desired.saturating_sub(current) as u64;
        }
        Ok(true)
    }
}

impl RequestState {
    pub(crate) fn new(component: Arc<ComponentContext>) -> Self {
        let wasi = WasiCtx::builder()
            .envs(&component.environment)
            .inherit_stdout()
            .inherit_stderr()
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: NoOutboundHttp,
            table: ResourceTable::new(),
            limits: Limits {
                max_memory_bytes: component.max_memory_bytes,
                used: MemoryUse::default(),
            },
            component,
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// flashcart functions make no outbound HTTP calls (the world has no
/// `wasi:http/client`, so a component that could is refused at load); this hook only
/// exists because `wasi:http/types` needs one.
struct NoOutboundHttp;

impl WasiHttpHooks for NoOutboundHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async {
            Err(wasmtime_wasi_http::Error::from(
                wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::HttpRequestDenied,
            ))
        })
    }

    /// wasmtime-wasi-http's own list, asked without building its filter: the default
    /// method allocates a new `Arc` closure for every header of every request and response.
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        forbidden_header(name)
    }

    /// The same list as one filter for the node, shared.
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        static FILTER: OnceLock<wasmtime_wasi_http::ForbiddenHeaderFilter> = OnceLock::new();
        Arc::clone(FILTER.get_or_init(|| Arc::new(forbidden_header)))
    }
}

/// Whether a header must never pass between host and guest (hop-by-hop headers and proxy
/// credentials: wasmtime-wasi-http's list).
fn forbidden_header(name: &http::HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

/// How a request to a component ended, when it did not produce a response.
#[derive(Debug)]
pub enum Failure {
    /// The guest ran past its deadline (epoch interruption or wall-clock timeout).
    Timeout(Duration),
    /// The guest trapped or the host failed while serving it.
    Trap(String),
    /// The guest answered with a `wasi:http` error code instead of a response.
    ErrorCode(String),
    /// No instance could be created for the request (e.g. the pool is exhausted).
    Unavailable(String),
}

/// A component's complete response.
#[derive(Debug)]
pub struct Answer {
    /// Status, headers.
    pub parts: http::response::Parts,
    /// The whole body.
    pub body: Bytes,
    /// Time to create the store and instantiate (zero when a reused instance served it).
    pub instantiate: Duration,
}

/// Runs one request on a fresh instance of `pre` and collects the whole response.
pub async fn serve(
    pre: &ServicePre<RequestState>,
    component: Arc<ComponentContext>,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let mut store = request_store(pre, component, timeout);
    serve_on(&mut store, pre, request, timeout).await
}

/// A new store for one request of `component`, its deadline `timeout` from now.
pub(crate) fn request_store(
    pre: &ServicePre<RequestState>,
    component: Arc<ComponentContext>,
    timeout: Duration,
) -> Store<RequestState> {
    let mut store = new_store(pre.engine(), component);
    let ticks = (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
    store
}

/// A new store for an instance of `component`, its memory capped by [`Limits`]: how every
/// store the host serves from begins.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    component: Arc<ComponentContext>,
) -> Store<RequestState> {
    let mut store = Store::new(engine, RequestState::new(component));
    store.limiter(|state| &mut state.limits);
    store
}

/// Instantiates `pre` in `store` (a new one from [`request_store`]), runs one request and
/// collects the whole response; the store is left to the caller (the bench reads what the
/// instance's memory grew to).
///
/// The response body is collected inside the store's event loop: guest bodies are
/// streams the guest writes while the loop runs, and flashcart's answers are small.
pub(crate) async fn serve_on(
    store: &mut Store<RequestState>,
    pre: &ServicePre<RequestState>,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let started = Instant::now();
    let work = async move {
        let service = pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| classify(e, timeout))?;
        let instantiate = started.elapsed();
        let (request, request_io) = {
            let hooks = store.data_mut().http().hooks;
            wasmtime_wasi_http::p3::Request::from_http(hooks, request)
        };
        let outcome = store
            .run_concurrent(async move |accessor| {
                let response = match service.handle(accessor, request).await? {
                    Ok(response) => response,
                    Err(code) => return Ok(Err(format!("{code:?}"))),
                };
                let response =
                    accessor.with(|mut store| response.into_http(&mut store, request_io))?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| wasmtime::Error::msg(format!("response body: {e:?}")))?
                    .to_bytes();
                wasmtime::Result::Ok(Ok((parts, body)))
            })
            .await
            .and_then(|inner| inner)
            .map_err(|e| classify(e, timeout))?;
        match outcome {
            Ok((parts, body)) => Ok(Answer {
                parts,
                body,
                instantiate,
            }),
            Err(code) => Err(Failure::ErrorCode(code)),
        }
    };
    // The epoch deadline stops a guest burning CPU; this stops one waiting forever
    // (e.g. on a host call that never completes). A little slack lets the epoch trap,
    // which names the cause, win the race when both apply.
    match tokio::time::timeout(timeout + 4 * EPOCH_TICK, work).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout(timeout)),
    }
}

fn classify(err: wasmtime::Error, timeout: Duration) -> Failure {
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        Failure::Timeout(timeout)
    } else {
        Failure::Trap(format!("{err:#}"))
    }
}
