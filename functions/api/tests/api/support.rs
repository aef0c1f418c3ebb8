use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flashcart_api::{ApiRequest, ApiResponse, Edge, EdgeConfig, Secret};
use flashcart_core::KeySchema;
use flashcart_core::inventory::{RateLimit, Settings};
use flashcart_core::signature::SigningSecret;
use flashcart_edge_cache::{CacheConfig, Clock, KvError, KvStore};
use flashcart_inventory::{RedisConn, Target};
use flashcart_testkit::RedisServer;

#[derive(Clone, Default)]
pub(crate) struct MemoryKv(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.lock().expect("lock").get(key).cloned())
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0
            .lock()
            .expect("lock")
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.0.lock().expect("lock").remove(key);
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemClock.now_ms()
}

pub(crate) const ADMIN: &str = "admin-token-for-tests";
pub(crate) const PSP_SECRET: &str = "whsec_current";

pub(crate) type TestEdge = Edge<RedisConn, MemoryKv, SystemClock>;

pub(crate) struct Node {
    pub(crate) redis: RedisServer,
    pub(crate) edge: TestEdge,
}

pub(crate) async fn node_with(rate: Option<RateLimit>, cache: CacheConfig) -> Node {
    let redis = RedisServer::start().expect("redis");
    let inventory = flashcart_inventory::open(
        &Target::Single(redis.url()),
        KeySchema::default(),
        Settings::default(),
    )
    .await
    .expect("inventory");
    let config = EdgeConfig {
        admin_token: Some(Secret::new(ADMIN)),
        psp_secrets: SigningSecret::list(&format!("{PSP_SECRET},whsec_previous")),
        buyer_rate: rate,
        ..EdgeConfig::default()
    };
    Node {
        edge: Edge::new(inventory, MemoryKv::default(), SystemClock, cache, config),
        redis,
    }
}

pub(crate) async fn node() -> Node {
    node_with(None, CacheConfig::default()).await
}

pub(crate) async fn load(
    edge: &TestEdge,
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
    edge.admin(&req).await
}

pub(crate) fn deduct_req(sku: &str, buyer: &str, qty: u64, key: &str) -> ApiRequest {
    ApiRequest::new("POST", &format!("/v1/stock/{sku}/reservations"))
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "buyer_id": buyer, "quantity": qty }))
}

pub(crate) fn order_req(reservation: &str, buyer: &str, key: &str) -> ApiRequest {
    ApiRequest::new("POST", "/v1/orders")
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "reservation_id": reservation, "buyer_id": buyer }))
}

pub(crate) fn payment_req(body: &serde_json::Value, secret: &str, timestamp: u64) -> ApiRequest {
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

/// The problem `type` slug of a response, asserting it is problem+json.
pub(crate) fn problem_type(resp: &ApiResponse) -> String {
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

/// Calls per command since the server started (`INFO commandstats`).
pub(crate) fn command_calls(redis: &RedisServer) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.connection().expect("conn"))
        .expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Every problem type the edge contract emits; the contract test sees each, and
/// `docs/openapi.json` lists exactly these.
pub(crate) const PROBLEM_TYPES: [&str; 23] = [
    "invalid-request",
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
    "sku-conflict",
    "rate-limited",
    "unauthorized",
    "invalid-signature",
    "payload-too-large",
    "unsupported-media-type",
    "not-found",
    "method-not-allowed",
    "inventory-unavailable",
];
