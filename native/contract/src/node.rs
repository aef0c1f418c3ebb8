//! A node under test: a private Redis, an inventory over it for set-up steps, and the edge
//! reached in-process or over HTTP through the host.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flashcart_api::{ApiRequest, ApiResponse, Edge, EdgeConfig, Secret};
use flashcart_core::KeySchema;
use flashcart_core::ids::RequestId;
use flashcart_core::inventory::{RateLimit, Settings};
use flashcart_core::signature::SigningSecret;
use flashcart_edge_cache::{CacheConfig, Clock, KvError, KvStore};
use flashcart_host::{App, AppConfig};
use flashcart_inventory::{NativeInventory, RedisConn, Target, Timeouts};
use flashcart_testkit::{RedisCluster, RedisServer, Snapshot};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

/// The admin token every node is configured with.
pub const ADMIN: &str = "admin-token-for-tests";
/// The current payment signing secret; `whsec_previous` is accepted too (rotation).
pub const PSP_SECRET: &str = "whsec_current";

/// Every problem type the edge contract emits; [`crate::contract`] sees each, and
/// `docs/openapi.json` lists exactly these.
pub const PROBLEM_TYPES: [&str; 26] = [
    "invalid-request",
    "inconsistent-request",
    "idempotency-key-missing",
    "idempotency-key-reused",
    "idempotency-key-in-flight",
    "unknown-sku",
    "not-on-sale",
    "sale-ended",
    "sold-out",
    "insufficient-stock",
    "purchase-limit-reached",
    "unknown-reservation",
    "reservation-gone",
    "reservation-already-ordered",
    "unknown-order",
    "illegal-transition",
    "sku-conflict",
    "rate-limited",
    "unauthorized",
    "invalid-signature",
    "payload-too-large",
    "unsupported-media-type",
    "not-found",
    "method-not-allowed",
    "inventory-unavailable",
    "inventory-recovering",
];

/// Problem types only an edge with `durability = replicated` emits (no replica confirmed a
/// write): the failover tests see them; listed in `docs/openapi.json` beside [`PROBLEM_TYPES`].
pub const REPLICATED_PROBLEM_TYPES: [&str; 1] = ["inventory-not-replicated"];

/// Stock reads stay fresh this long in tests, so "the second read is a cache hit" does not
/// depend on how busy the machine is.
const CACHE_STALENESS_MS: u64 = 5_000;

/// Problem types only the host writes (the request never reached a component, or the
/// component failed); listed in `docs/openapi.json` beside [`PROBLEM_TYPES`].
pub const HOST_PROBLEM_TYPES: [&str; 6] = [
    "unreadable-body",
    "body-timeout",
    "component-timeout",
    "component-failed",
    "component-error",
    "instance-unavailable",
];

/// How the edge is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The handlers, called directly.
    InProcess,
    /// HTTP to flashcart's host serving `spin.toml` with the built components.
    Http,
    /// As [`Kind::Http`], against a private Redis Cluster of 3 masters with a replica each:
    /// the components route each call to its partition's master themselves.
    HttpCluster,
}

/// The set-up clients' patience: a busy 2-core machine can keep a node from answering for
/// seconds; a lost answer still fails the test, only later.
const PATIENT: Timeouts = Timeouts {
    response: std::time::Duration::from_secs(60),
    connection: std::time::Duration::from_secs(20),
};

/// The private Redis a node runs against.
pub enum Redis {
    /// One server.
    Single(RedisServer),
    /// A cluster (3 masters, a replica each).
    Cluster(RedisCluster),
}

/// `cluster-node-timeout` of the test kit's clusters here: a master is failed over about this
/// long after it died (plus the replica's election, about a second).
pub const CLUSTER_NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Redis {
    /// Starts what `kind` runs against.
    ///
    /// # Panics
    /// When the servers cannot start.
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::InProcess | Kind::Http => {
                Redis::Single(RedisServer::start().expect("redis-server"))
            }
            Kind::HttpCluster => Redis::Cluster(
                RedisCluster::start_with_replicas(3, 1, CLUSTER_NODE_TIMEOUT)
                    .expect("a redis cluster of 3 masters with a replica each"),
            ),
        }
    }

    /// Every server that takes writes: the one server, or a cluster's masters as started (a
    /// replica's counters and keys are copies of its master's; asking the nodes their roles
    /// would move the counters tests read).
    pub fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Redis::Single(s) => vec![s],
            Redis::Cluster(c) => c.first_masters().iter().collect(),
        }
    }

    /// `redis_address` for the components: `host:port`, comma-separated for a cluster (every
    /// node, replicas too: any node answers `CLUSTER NODES`).
    pub fn seeds(&self) -> String {
        let nodes = match self {
            Redis::Single(s) => std::slice::from_ref(s),
            Redis::Cluster(c) => c.nodes(),
        };
        nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The native clients' target.
    pub fn target(&self) -> Target {
        match self {
            Redis::Single(s) => Target::Single(s.url()),
            Redis::Cluster(c) => Target::Cluster(c.urls()),
        }
    }

    /// Every key of every server (see [`flashcart_testkit::snapshot`]).
    ///
    /// # Panics
    /// When a server cannot be read.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.servers()
            .iter()
            .map(|s| flashcart_testkit::snapshot(s).expect("snapshot"))
            .collect()
    }
}

/// Per-node settings.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The per-buyer token bucket (`None`: off).
    pub rate: Option<RateLimit>,
    /// How long a sold-out SKU is answered without Redis.
    pub sold_out_ttl_ms: u64,
    /// The edge cache's clock (in-process only; over HTTP the host's wall clock).
    pub clock: NodeClock,
    /// Over HTTP: variables set after the node's own (e.g. `redis_cluster_hosts`).
    pub variables: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            rate: None,
            sold_out_ttl_ms: 1_000,
            clock: NodeClock::Wall,
            variables: Vec::new(),
        }
    }
}

/// The clock an in-process node's edge cache reads. Redis decides with its own clock either way.
#[derive(Debug, Clone, Default)]
pub enum NodeClock {
    /// The wall clock.
    #[default]
    Wall,
    /// A clock the test moves (unix ms).
    Manual(Arc<AtomicU64>),
}

impl NodeClock {
    /// A manual clock starting at the wall clock's now.
    pub fn manual() -> Self {
        NodeClock::Manual(Arc::new(AtomicU64::new(now_ms())))
    }

    /// Moves a manual clock forward.
    ///
    /// # Panics
    /// On the wall clock.
    pub fn advance(&self, ms: u64) {
        match self {
            NodeClock::Manual(t) => {
                t.fetch_add(ms, Ordering::SeqCst);
            }
            NodeClock::Wall => panic!("the wall clock cannot be moved"),
        }
    }
}

/// An in-memory key-value store for in-process nodes.
#[derive(Clone, Default)]
struct MemoryKv(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .0
            .lock()
            .map_err(|e| KvError(e.to_string()))?
            .get(key)
            .cloned())
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0
            .lock()
            .map_err(|e| KvError(e.to_string()))?
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.0
            .lock()
            .map_err(|e| KvError(e.to_string()))?
            .remove(key);
        Ok(())
    }
}

impl Clock for NodeClock {
    fn now_ms(&self) -> u64 {
        match self {
            NodeClock::Wall => now_ms(),
            NodeClock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

/// Now, unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type InProcessEdge = Edge<RedisConn, MemoryKv, NodeClock>;

enum Transport {
    InProcess(InProcessEdge),
    Http {
        address: std::net::SocketAddr,
        client: Client<HttpConnector, Full<Bytes>>,
        _stop: oneshot::Sender<()>,
    },
}

/// A node under test.
pub struct Node {
    redis: Option<Redis>,
    /// An inventory over the node's Redis, for set-up steps a buyer cannot take.
    pub inventory: NativeInventory,
    transport: Transport,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where compiled components are cached between test runs (keyed by wasm and engine hash).
fn compiled_cache() -> PathBuf {
    flashcart_testkit::target_dir().join("flashcart-test-compiled")
}

impl Node {
    /// Starts a private Redis and the edge over it.
    ///
    /// # Panics
    /// When Redis cannot start, or (over HTTP) the components were not built.
    pub async fn start(kind: Kind, options: NodeOptions) -> Self {
        Self::start_on(kind, options, Redis::start(kind)).await
    }

    /// Starts the edge over `redis`.
    ///
    /// # Panics
    /// When Redis cannot be reached, or (over HTTP) the components were not built.
    pub async fn start_on(kind: Kind, options: NodeOptions, redis: Redis) -> Self {
        let mut node = Self::start_beside(kind, options, &redis).await;
        node.redis = Some(redis);
        node
    }

    /// Starts the edge over `redis`, which the caller keeps (to kill and restart its nodes
    /// while buyers use the edge); [`Node::redis`] is not available then.
    ///
    /// # Panics
    /// As [`Node::start_on`].
    pub async fn start_beside(kind: Kind, options: NodeOptions, redis: &Redis) -> Self {
        let target = redis.target();
        let inventory = flashcart_inventory::open_with(
            &target,
            KeySchema::default(),
            Settings::default(),
            PATIENT,
        )
        .await
        .expect("inventory");
        let transport = match kind {
            Kind::InProcess => {
                let conn = RedisConn::connect_with(&target, PATIENT)
                    .await
                    .expect("connect");
                let config = EdgeConfig {
                    admin_token: Some(Secret::new(ADMIN)),
                    psp_secrets: SigningSecret::list(&format!("{PSP_SECRET},whsec_previous")),
                    ..EdgeConfig::default()
                };
                let cache = CacheConfig {
                    staleness_ms: CACHE_STALENESS_MS,
                    sold_out_ttl_ms: options.sold_out_ttl_ms,
                    ..CacheConfig::default()
                };
                let inv = flashcart_core::Inventory::new(
                    conn,
                    KeySchema::default(),
                    Settings::edge(options.rate),
                );
                Transport::InProcess(Edge::new(
                    inv,
                    MemoryKv::default(),
                    options.clock,
                    cache,
                    config,
                ))
            }
            Kind::Http | Kind::HttpCluster => {
                assert!(
                    matches!(options.clock, NodeClock::Wall),
                    "a manual clock drives in-process nodes only"
                );
                Self::serve_manifest(redis, &options).await
            }
        };
        Self {
            redis: None,
            inventory,
            transport,
        }
    }

    async fn serve_manifest(redis: &Redis, options: &NodeOptions) -> Transport {
        let root = repo_root();
        for c in [
            "stock_check",
            "deduct",
            "order_create",
            "payment_callback",
            "admin",
        ] {
            let wasm = root.join(format!("build/flashcart_fn_{c}.wasm"));
            assert!(
                wasm.exists(),
                "{} is missing: build the components first (scripts/build-component.sh flashcart-fn-…, \
                 which scripts/test.sh runs)",
                wasm.display()
            );
        }
        let mut config = AppConfig::new(root.join("spin.toml"));
        config.runtime.cache_dir = Some(compiled_cache());
        let (capacity, per_second) = options
            .rate
            .map_or((0, 0), |r| (r.capacity, r.refill_per_second));
        config.providers.cli = [
            ("redis_address", redis.seeds()),
            // Every node of the test kit's cluster is on 127.0.0.1, on ports it picked.
            ("redis_cluster_hosts", "127.0.0.1:*".to_owned()),
            ("admin_token", ADMIN.to_owned()),
            (
                "psp_signing_secrets",
                format!("{PSP_SECRET},whsec_previous"),
            ),
            ("buyer_rate_capacity", capacity.to_string()),
            ("buyer_rate_per_second", per_second.to_string()),
            ("sold_out_ttl_ms", options.sold_out_ttl_ms.to_string()),
            ("cache_staleness_ms", CACHE_STALENESS_MS.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(options.variables.iter().cloned())
        .collect();
        let app = Arc::new(App::load(&config).unwrap_or_else(|e| panic!("loading spin.toml: {e}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(flashcart_host::run(app, listener, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        Transport::Http {
            address,
            client,
            _stop: stop,
        }
    }

    /// The node's Redis (until [`Node::kill_redis`]).
    ///
    /// # Panics
    /// After [`Node::kill_redis`].
    pub fn redis(&self) -> &Redis {
        self.redis.as_ref().expect("redis was killed")
    }

    /// Stops the node's Redis: the edge must answer 503 from now on.
    pub fn kill_redis(&mut self) {
        self.redis = None;
    }

    /// Sends a request to the edge; over HTTP, to the route `spin.toml` gives it.
    ///
    /// # Panics
    /// When the HTTP exchange itself fails.
    pub async fn send(&self, req: ApiRequest) -> ApiResponse {
        match &self.transport {
            Transport::InProcess(edge) => dispatch(edge, &req).await,
            Transport::Http {
                address, client, ..
            } => {
                let mut builder = hyper::Request::builder()
                    .method(req.method.as_str())
                    .uri(format!("http://{address}{}", req.path));
                for (name, value) in &req.headers {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                let request = builder
                    .body(Full::new(Bytes::from(req.body)))
                    .expect("request");
                let response = client
                    .request(request)
                    .await
                    .unwrap_or_else(|e| panic!("HTTP to the host: {e:?}"));
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            v.to_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes()
                    .to_vec();
                ApiResponse {
                    status,
                    headers,
                    body,
                }
            }
        }
    }
}

/// Routes like `spin.toml` does, for the in-process node. The request is named as the glue
/// names it: by the caller's valid `x-request-id`, else by a new one.
async fn dispatch(edge: &InProcessEdge, req: &ApiRequest) -> ApiResponse {
    static REQUESTS: AtomicU64 = AtomicU64::new(0);
    let request_id = req.request_id().unwrap_or_else(|| {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
        RequestId::parse(&format!("in-process-{n}")).expect("a valid request id")
    });
    let path = req.path.as_str();
    if path == flashcart_api::document::PATH {
        flashcart_api::document::serve(req)
    } else if path.starts_with("/v1/stock/") {
        if path.trim_end_matches('/').ends_with("/reservations") {
            edge.deduct(req, &request_id).await
        } else {
            edge.stock_check(req, &request_id).await
        }
    } else if path.starts_with("/v1/orders") {
        edge.orders(req).await
    } else if path.starts_with("/v1/payments/") {
        edge.payment_callback(req).await
    } else if path.starts_with("/v1/admin/") {
        edge.admin(req).await
    } else {
        ApiResponse::problem(&flashcart_core::Rejection::NotFound)
    }
}

/// `PUT /v1/admin/skus/{sku}`: `stock` units in `segments`, on sale from now + `start_offset_ms`
/// for an hour, 2 per buyer.
pub async fn load(
    node: &Node,
    sku: &str,
    stock: u64,
    segments: u16,
    start_offset_ms: i64,
) -> ApiResponse {
    let start = (now_ms() as i64 + start_offset_ms) as u64;
    let req = ApiRequest::new("PUT", &format!("/v1/admin/skus/{sku}"))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .json(&serde_json::json!({
            "stock": stock, "segments": segments, "price": 1999, "currency": "EUR",
            "sale_start": start, "sale_end": start + 3_600_000, "per_buyer_limit": 2,
        }));
    node.send(req).await
}

/// A deduct request.
pub fn deduct_req(sku: &str, buyer: &str, qty: u64, key: &str) -> ApiRequest {
    ApiRequest::new("POST", &format!("/v1/stock/{sku}/reservations"))
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "buyer_id": buyer, "quantity": qty }))
}

/// An order-create request.
pub fn order_req(reservation: &str, buyer: &str, key: &str) -> ApiRequest {
    ApiRequest::new("POST", "/v1/orders")
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "reservation_id": reservation, "buyer_id": buyer }))
}

/// The admin's read of SKU `sku`: levels per segment, totals, and whether the books balance.
pub fn admin_state_req(sku: &str) -> ApiRequest {
    ApiRequest::new("GET", &format!("/v1/admin/skus/{sku}"))
        .header("authorization", &format!("Bearer {ADMIN}"))
}

/// The buyer's cancel of order `order`.
pub fn cancel_req(order: &str, buyer: &str) -> ApiRequest {
    ApiRequest::new("POST", &format!("/v1/orders/{order}/cancel"))
        .json(&serde_json::json!({ "buyer_id": buyer }))
}

/// A payment callback signed with `secret` at `timestamp`.
pub fn payment_req(body: &serde_json::Value, secret: &str, timestamp: u64) -> ApiRequest {
    let raw = body.to_string();
    let sig = flashcart_core::signature::sign(
        &SigningSecret::new(secret.as_bytes()),
        timestamp,
        raw.as_bytes(),
    );
    let mut req =
        ApiRequest::new("POST", "/v1/payments/callback").header("content-type", "application/json");
    req.body = raw.into_bytes();
    req.header("flashcart-signature", &sig)
}

/// A problem answer's `detail` (empty when there is none).
pub fn problem_detail(resp: &ApiResponse) -> String {
    resp.json_body()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The problem `type` slug of a response, asserting it is problem+json with its status.
pub fn problem_type(resp: &ApiResponse) -> String {
    assert_eq!(
        resp.header_value("content-type"),
        Some("application/problem+json"),
        "{resp:?}"
    );
    let body = resp.json_body();
    assert_eq!(body["status"], resp.status);
    body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:flashcart:problem:")
        .to_owned()
}

/// Commands the servers ran since they started (those run inside functions too), but `INFO`,
/// which reads these counters.
pub fn redis_commands(redis: &Redis) -> u64 {
    command_calls(redis)
        .into_iter()
        .filter(|(command, _)| command != "info")
        .map(|(_, calls)| calls)
        .sum()
}

/// Function calls (`FCALL` and `FCALL_RO`) since the servers started.
pub fn function_calls(redis: &Redis) -> u64 {
    let calls = command_calls(redis);
    ["fcall", "fcall_ro"]
        .iter()
        .filter_map(|c| calls.get(*c))
        .sum()
}

/// Calls per command since the servers started, summed over them (`INFO commandstats`).
pub fn command_calls(redis: &Redis) -> HashMap<String, u64> {
    let mut calls = HashMap::new();
    for server in redis.servers() {
        let mut conn = server.connection().expect("conn");
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .expect("info replication");
        // A replica executes what its master sends it (the effects of writes, and a PING every
        // few seconds): only masters count what the edge asked.
        if replication.lines().any(|l| l.trim() == "role:slave") {
            continue;
        }
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .expect("info");
        for (name, n) in info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let n: u64 = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), n))
            })
            // A replica's acknowledgements of its replication offset, once a second.
            .filter(|(name, _)| name != "replconf")
        {
            *calls.entry(name).or_default() += n;
        }
    }
    calls
}
