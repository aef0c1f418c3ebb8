//! flashcart-api: the HTTP contract of the edge functions (`docs/openapi.json` is generated
//! from it).
//!
//! Each handler parses a request, calls the domain core and renders a response; it is
//! generic over the Redis executor, the node-local key-value store and the clock, so every
//! component runs the same code and native tests drive it against real Redis.
//!
//! - [`http`]: requests and responses as plain data, problem+json
//! - [`Edge`]: the handlers, one module per route: [`Edge::stock_check`] (`stock`),
//!   [`Edge::deduct`] (`deduct`), [`Edge::orders`] (`orders`), [`Edge::payment_callback`]
//!   (`payments`), [`Edge::admin`] (`admin`, and the live sale page in `sale`)
//! - [`document`]: `GET /v1/openapi.json`, the committed document compiled in
//! - `openapi` (feature `openapi`): that document, generated from the body types above
#![deny(missing_docs)]

mod admin;
mod deduct;
pub mod document;
pub mod http;
#[cfg(feature = "openapi")]
pub mod openapi;
mod orders;
mod payments;
mod sale;
mod stock;

use flashcart_core::ids::IdempotencyKey;
use flashcart_core::signature::{self, SigningSecret};
use flashcart_core::{Inventory, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, EdgeCache, KvStore};

pub use admin::Secret;
pub use http::{ApiRequest, ApiResponse};
pub use stock::StockView;

/// What an edge node is configured with (from Spin variables at the edge). The buyers' rate
/// limit is the inventory's ([`flashcart_core::Settings::buyer_rate`]): Redis applies it.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The admin bearer token; without one, admin calls are refused.
    pub admin_token: Option<Secret>,
    /// The payment provider's signing secrets, newest first.
    pub psp_secrets: Vec<SigningSecret>,
    /// Signature timestamp tolerance, seconds.
    pub signature_tolerance_s: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            psp_secrets: Vec::new(),
            signature_tolerance_s: signature::DEFAULT_TOLERANCE_S,
            max_body_bytes: 16 * 1024,
        }
    }
}

/// The edge: inventory, cache, clock and configuration.
pub struct Edge<E, S, C> {
    inventory: Inventory<E>,
    cache: EdgeCache<S, C>,
    clock: C,
    config: EdgeConfig,
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// An edge over these parts.
    pub fn new(
        inventory: Inventory<E>,
        store: S,
        clock: C,
        cache: flashcart_edge_cache::CacheConfig,
        config: EdgeConfig,
    ) -> Self {
        Self {
            inventory,
            cache: EdgeCache::new(store, clock.clone(), cache),
            clock,
            config,
        }
    }

    /// The inventory (tests).
    pub fn inventory(&self) -> &Inventory<E> {
        &self.inventory
    }
}

/// The request's `Idempotency-Key`, required.
fn idempotency_key(req: &ApiRequest) -> Result<IdempotencyKey, Rejection> {
    let raw = req
        .header_value("idempotency-key")
        .ok_or(Rejection::MissingIdempotencyKey)?;
    Ok(IdempotencyKey::parse(raw)?)
}

/// Marks a response that replays an earlier decision.
fn replay_header(resp: ApiResponse, replayed: bool) -> ApiResponse {
    if replayed {
        resp.with_header("idempotent-replayed", "true")
    } else {
        resp
    }
}

/// A handler's answer: its response, or its refusal as problem+json.
fn respond(result: Result<ApiResponse, Rejection>) -> ApiResponse {
    result.unwrap_or_else(|r| ApiResponse::problem(&r))
}
