//! flashcart-spin: what every flashcart edge component shares on Spin (or flashcart's own
//! host, which implements the same interfaces).
//!
//! - [`SpinRedis`]: `spin:redis` behind the core's `RedisExecutor`: a
//!   [`flashcart_redis_route::Router`] over [`SpinConnector`], so a Redis Cluster's masters are
//!   reached directly (slot map, `MOVED`/`ASK`), and a single Redis exactly as before.
//! - [`SpinKv`]: the node's `default` key-value store behind the edge cache's [`KvStore`],
//!   opened on first use.
//! - [`serve`]: reads the WASI request into the contract's `ApiRequest`, runs one
//!   [`Operation`] on the instance's [`Edge`], answers its `ApiResponse` as a WASI response;
//!   [`serve_stock_check`] adds the API document (`GET /v1/openapi.json`) for the one
//!   component that serves it. [`component!`] exports either as the component's handler.
//!
//! An instance builds its `Edge` once, for its first request (reading the variables), and
//! keeps it for the requests the host sends it after that: Spin 4.1 and `wasmtime serve`
//! reuse an instance for many sequential and concurrent requests. The `Edge` holds no
//! per-request state, so requests that interleave at await points share it safely. Redis and
//! the key-value store are opened when a request first needs them: on Spin every Redis open
//! is a new TCP connection, and a cache hit or a sold-out answer needs none.
//!
//! Variables (see `spin.toml`): `redis_address` (required: `host:port`, or a comma-separated
//! list of a Redis Cluster's seed nodes), `admin_token`,
//! `psp_signing_secrets` (comma-separated, newest first), `partitions` (16),
//! `cache_staleness_ms` (250), `sold_out_ttl_ms` (1000), `buyer_rate_capacity` (20),
//! `buyer_rate_per_second` (10; 0 turns the limiter off), `durability` (`local`, or
//! `replicated`: a replica confirms every write within `durability_wait_ms`, 100, or the
//! answer is 503 — see [`flashcart_redis_route::durability`]).
#![deny(missing_docs)]

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use flashcart_api::{ApiRequest, ApiResponse, Edge, EdgeConfig, Secret};
use flashcart_core::exec::Value;
use flashcart_core::ids::RequestId;
use flashcart_core::inventory::{RateLimit, Settings};
use flashcart_core::signature::SigningSecret;
use flashcart_core::{Inventory, KeySchema, Rejection};
use flashcart_edge_cache::{CacheConfig, Clock, KvError, KvStore};
use flashcart_redis_route::{Connector, Durability, MapCache, OpenError, Router, Seeds};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::redis::{self as redis3, RedisParameter, RedisResult};
use spin_sdk::wasip3::http_compat::IncomingBody;

/// `spin:redis` connections for the [`Router`]: one `open` per node the instance talks to
/// (on Spin every `open` is a new TCP connection; on flashcart's host, a handle on the
/// node's shared multiplexed client for that address).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpinConnector;

impl Connector for SpinConnector {
    type Connection = redis3::Connection;

    async fn open(&self, url: &str) -> Result<redis3::Connection, OpenError> {
        redis3::Connection::open(url).await.map_err(|e| match e {
            // What Spin (and flashcart's host) answer for an address outside the component's
            // allowed_outbound_hosts; nothing was dialled.
            redis3::Error::InvalidAddress => OpenError::NotAllowed,
            other => OpenError::Unreachable(format!("{other:?}")),
        })
    }

    async fn execute(
        &self,
        conn: &redis3::Connection,
        command: &str,
        args: &[String],
    ) -> Result<Vec<Value>, String> {
        let params = args
            .iter()
            .map(|a| RedisParameter::Binary(a.as_bytes().to_vec()));
        match conn.execute(command, params).await {
            Ok(results) => Ok(results
                .into_iter()
                .map(|r| match r {
                    RedisResult::Nil => Value::Nil,
                    RedisResult::Status(s) => Value::Status(s),
                    RedisResult::Int64(i) => Value::Int(i),
                    RedisResult::Binary(b) => Value::Bytes(b),
                })
                .collect()),
            // A server error is `other(<message>)`: the message is all there is to read.
            Err(redis3::Error::Other(message)) => Err(message),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    async fn pause(&self, ms: u64) {
        spin_sdk::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// The core's executor on Spin: `redis_address`'s seeds, routed per slot when they are a
/// Redis Cluster, with the slot map shared through the node's key-value store.
pub type SpinRedis = Router<SpinConnector, SpinKv, WallClock>;

/// How long a slot map one instance read serves the node's other instances before one of
/// them asks the cluster again (a stale map costs a `MOVED`, never a wrong answer).
const TOPOLOGY_TTL_MS: u64 = 5_000;

/// The node's `default` key-value store, opened on first use and kept for the instance's life;
/// clones share it (the edge cache and the slot map).
#[derive(Clone, Default)]
pub struct SpinKv(Rc<RefCell<Option<Rc<spin_sdk::key_value::Store>>>>);

impl SpinKv {
    async fn store(&self) -> Result<Rc<spin_sdk::key_value::Store>, KvError> {
        if let Some(store) = self.0.borrow().as_ref() {
            return Ok(Rc::clone(store));
        }
        let opened = spin_sdk::key_value::Store::open_default()
            .await
            .map_err(|e| KvError(format!("cannot open the key-value store: {e:?}")))?;
        Ok(Rc::clone(
            self.0.borrow_mut().get_or_insert_with(|| Rc::new(opened)),
        ))
    }
}

impl KvStore for SpinKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.store()
            .await?
            .get(key)
            .await
            .map_err(|e| KvError(format!("{e:?}")))
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.store()
            .await?
            .set(key, value)
            .await
            .map_err(|e| KvError(format!("{e:?}")))
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.store()
            .await?
            .delete(key)
            .await
            .map_err(|e| KvError(format!("{e:?}")))
    }
}

/// The wall clock of the node.
#[derive(Debug, Clone, Copy)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Which handler a component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/stock/{sku}`
    StockCheck,
    /// `POST /v1/stock/{sku}/reservations`
    Deduct,
    /// `POST /v1/orders`, `GET /v1/orders/{id}`
    Orders,
    /// `POST /v1/payments/callback`
    PaymentCallback,
    /// `PUT|GET /v1/admin/skus/{sku}`
    Admin,
}

/// The edge as a component builds it.
pub type SpinEdge = Edge<SpinRedis, SpinKv, WallClock>;

async fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .filter(|v| !v.is_empty())
}

async fn number(name: &str, default: u64) -> Result<u64, Rejection> {
    match variable(name).await {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| Rejection::Unreachable(format!("variable {name} is not a number"))),
    }
}

/// Builds the edge from the component's variables. Opens nothing: Redis and the key-value
/// store connect on first use.
///
/// # Errors
/// 503 naming the variable when `redis_address` is missing, a number is malformed, or
/// `durability` is not a profile.
pub async fn edge() -> Result<SpinEdge, Rejection> {
    let address = variable("redis_address")
        .await
        .ok_or_else(|| Rejection::Unreachable("the redis_address variable is not set".into()))?;
    let seeds = Seeds::parse(&address).map_err(|e| Rejection::Unreachable(e.to_string()))?;
    let durability = Durability::parse(
        variable("durability").await.as_deref(),
        variable("durability_wait_ms").await.as_deref(),
    )
    .map_err(|e| Rejection::Unreachable(e.to_string()))?;
    let partitions = number("partitions", u64::from(KeySchema::DEFAULT_PARTITIONS)).await?;
    let schema = KeySchema::new(u32::try_from(partitions).unwrap_or(0))
        .map_err(|e| Rejection::Unreachable(format!("variable partitions: {e}")))?;
    let cache = CacheConfig {
        staleness_ms: number("cache_staleness_ms", 250).await?,
        sold_out_ttl_ms: number("sold_out_ttl_ms", 1_000).await?,
        ..CacheConfig::default()
    };
    let per_second = number("buyer_rate_per_second", 10).await?;
    let settings = Settings::edge(match per_second {
        0 => None,
        _ => Some(RateLimit {
            capacity: number("buyer_rate_capacity", 20).await?,
            refill_per_second: per_second,
        }),
    });
    let config = EdgeConfig {
        admin_token: variable("admin_token").await.map(Secret::new),
        psp_secrets: variable("psp_signing_secrets")
            .await
            .map(|v| SigningSecret::list(&v))
            .unwrap_or_default(),
        ..EdgeConfig::default()
    };
    let kv = SpinKv::default();
    let map_cache = MapCache {
        store: kv.clone(),
        clock: WallClock,
        ttl_ms: TOPOLOGY_TTL_MS,
    };
    let redis = Router::new(seeds, SpinConnector, Some(map_cache)).with_durability(durability);
    let inventory = Inventory::new(redis, schema, settings);
    Ok(Edge::new(inventory, kv, WallClock, cache, config))
}

thread_local! {
    /// This instance's edge, built by its first request (wasm instances are single-threaded).
    static EDGE: RefCell<Option<Rc<SpinEdge>>> = const { RefCell::new(None) };
}

/// This instance's edge, built on first use. A failed build is not kept: the next request
/// tries again.
async fn instance_edge() -> Result<Rc<SpinEdge>, Rejection> {
    if let Some(edge) = EDGE.with_borrow(Option::clone) {
        return Ok(edge);
    }
    let built = Rc::new(edge().await?);
    // Requests interleave at await points: a concurrent first request may have built one too.
    Ok(EDGE.with_borrow_mut(|edge| Rc::clone(edge.get_or_insert(built))))
}

/// Names the request: the caller's `x-request-id` when it is a valid [`RequestId`] (the
/// host's, or a gateway's in front of it), else a random one, which replaces an invalid one
/// in `req` so the handlers (and the events they append) see the same id the answer carries.
fn identify(req: &mut ApiRequest) -> RequestId {
    if let Some(id) = req.request_id() {
        return id;
    }
    let random = |seed: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(seed);
        u128::from(hasher.finish())
    };
    let id = RequestId::from_random(random(0) << 64 | random(1));
    req.set_header(RequestId::HEADER, id.as_str());
    id
}

/// A request as the WASI HTTP handler receives it.
pub type WasiRequest = spin_sdk::wasip3::http::types::Request;
/// A response as the WASI HTTP handler answers it.
pub type WasiResponse = spin_sdk::wasip3::http::types::Response;

/// Exports a flashcart component's WASI HTTP handler: `$handler`, an
/// `async fn(WasiRequest) -> WasiResponse`, gets each request as the host sent it.
///
/// What spin-sdk's `#[http_service]` generates, but without its conversions through the `http`
/// crate: [`serve`] reads the method, path, headers and body straight from the WASI request
/// and builds the WASI response from the contract's `ApiResponse`, so headers are copied once
/// each way instead of being parsed into a `HeaderMap` first.
#[macro_export]
macro_rules! component {
    ($handler:path) => {
        mod __flashcart_component {
            use ::spin_sdk::wasip3::http::types::{ErrorCode, Request, Response};

            struct Component;
            ::spin_sdk::wasip3::http::service::export!(Component);

            impl ::spin_sdk::wasip3::exports::http::handler::Guest for Component {
                async fn handle(request: Request) -> Result<Response, ErrorCode> {
                    Ok($handler(request).await)
                }
            }
        }
    };
}

/// The stock-check component's requests: `GET /v1/openapi.json`, the API document compiled
/// in ([`flashcart_api::document`]: no Redis, no variables), and everything else through
/// [`serve`] as [`Operation::StockCheck`] (the stock read, and the app's 404 for paths no
/// operation owns). Only this component links the document.
pub async fn serve_stock_check(req: WasiRequest) -> WasiResponse {
    serve_read(req, async |api| {
        if api.path == flashcart_api::document::PATH {
            render(flashcart_api::document::serve(&api))
        } else {
            serve_api(api, Operation::StockCheck).await
        }
    })
    .await
}

/// Runs `op` for a request.
pub async fn serve(req: WasiRequest, op: Operation) -> WasiResponse {
    serve_read(req, async |api| serve_api(api, op).await).await
}

/// Reads `req` and answers it with `answer`, or, when it cannot be read, with the problem
/// that says why.
async fn serve_read(
    req: WasiRequest,
    answer: impl AsyncFnOnce(ApiRequest) -> WasiResponse,
) -> WasiResponse {
    match api_request(req).await {
        Ok(api) => answer(api).await,
        Err(refusal) => render(ApiResponse::problem(&refusal)),
    }
}

/// The request as the contract sees it: method, path without the query, the headers whose
/// values are text (visible ASCII, space and tab: what `http::HeaderValue::to_str` accepts)
/// and the whole body.
async fn api_request(req: WasiRequest) -> Result<ApiRequest, Rejection> {
    let method = http::Method::try_from(req.get_method())
        .map_err(|_| Rejection::Unavailable("the request's method is not HTTP".into()))?;
    let mut path = req.get_path_with_query().unwrap_or_else(|| "/".to_owned());
    if let Some(query) = path.find('?') {
        path.truncate(query);
    }
    let headers = req
        .get_headers()
        .copy_all()
        .into_iter()
        .filter_map(|(name, value)| Some((name, header_text(value)?)))
        .collect();
    let reading = |e: spin_sdk::wasip3::http::types::ErrorCode| {
        Rejection::Unavailable(format!("reading the body: {e:?}"))
    };
    let body = IncomingBody::new(req)
        .map_err(reading)?
        .bytes()
        .await
        .map_err(reading)?
        .to_vec();
    Ok(ApiRequest {
        method: method.as_str().to_owned(),
        path,
        headers,
        body,
    })
}

/// A header value as text, when it is text: visible ASCII, space and tab, what
/// `http::HeaderValue::to_str` accepts (written out rather than through `HeaderValue`, which
/// would copy every value on the hot path).
///
/// The bytes are tested first: text of visible ASCII is valid UTF-8, which `from_utf8` then
/// confirms on its word-at-a-time ASCII path.
fn header_text(value: Vec<u8>) -> Option<String> {
    let visible = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b);
    if value.iter().all(visible) {
        String::from_utf8(value).ok()
    } else {
        None
    }
}

/// Runs `op` for a request read whole.
async fn serve_api(mut api: ApiRequest, op: Operation) -> WasiResponse {
    let request_id = identify(&mut api);
    let edge = match instance_edge().await {
        Ok(e) => e,
        Err(r) => return render_for(ApiResponse::problem(&r), &request_id),
    };
    let response = match op {
        Operation::StockCheck => edge.stock_check(&api, &request_id).await,
        Operation::Deduct => edge.deduct(&api, &request_id).await,
        Operation::Orders => edge.orders(&api).await,
        Operation::PaymentCallback => edge.payment_callback(&api).await,
        Operation::Admin => {
            // Loading a SKU is the first thing any Redis sees: bring the library with it.
            if api.method == "PUT"
                && let Err(e) = edge.inventory().ensure_library().await
            {
                return render_for(ApiResponse::problem(&Rejection::from(e)), &request_id);
            }
            edge.admin(&api).await
        }
    };
    render_for(response, &request_id)
}

/// Renders `resp` with the request's id, as the host answers it (on real Spin the glue is
/// the only one who can).
fn render_for(mut resp: ApiResponse, request_id: &RequestId) -> WasiResponse {
    resp.set_header(RequestId::HEADER, request_id.as_str());
    render(resp)
}

fn render(resp: ApiResponse) -> WasiResponse {
    let status = resp.status;
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    wasi_response(status, &headers, resp.body).unwrap_or_else(|| {
        wasi_response(500, &[], b"{\"status\":500}".to_vec())
            .expect("a 500 without headers is a valid response")
    })
}

/// The WASI response for `status`, `headers` and `body`, the body written by a task of its
/// own as the host reads it; `None` when the host refuses a header or the status.
fn wasi_response(
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
) -> Option<WasiResponse> {
    use spin_sdk::wasip3::http::types::{ErrorCode, Fields, Trailers};
    let fields = Fields::from_list(headers).ok()?;
    let (mut body_writer, body_reader) = spin_sdk::wasip3::wit_stream::new();
    let (trailers_writer, trailers_reader) =
        spin_sdk::wasip3::wit_future::new(|| Ok::<Option<Trailers>, ErrorCode>(None));
    let (response, _sent) = WasiResponse::new(fields, Some(body_reader), trailers_reader);
    response.set_status_code(status).ok()?;
    spin_sdk::wasip3::spawn(async move {
        // The stream closes when the writer is dropped; then the trailers (none) resolve.
        let _unwritten = body_writer.write_all(body).await;
        drop(body_writer);
        let _ = trailers_writer.write(Ok(None)).await;
    });
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::header_text;

    #[test]
    fn a_header_value_is_kept_only_when_it_is_text() {
        assert_eq!(
            header_text(b"ticket 47\t11".to_vec()).as_deref(),
            Some("ticket 47\t11")
        );
        assert_eq!(header_text(Vec::new()).as_deref(), Some(""));
        assert_eq!(header_text("caf\u{e9}".into()), None, "UTF-8 past ASCII");
        assert_eq!(header_text(b"a\x00b".to_vec()), None, "a control byte");
        assert_eq!(header_text(b"a\x7fb".to_vec()), None, "DEL");
        assert_eq!(header_text(vec![0xff, b'a']), None, "not UTF-8");
    }
}
