//! flashcart-api: the HTTP contract of the edge functions (see `docs/openapi.yaml`).
//!
//! Each handler parses a request, calls the domain core and renders a response; it is
//! generic over the Redis executor, the node-local key-value store and the clock, so every
//! component runs the same code and native tests drive it against real Redis.
//!
//! - [`http`]: requests and responses as plain data, problem+json
//! - [`Edge`]: the handlers: [`Edge::stock_check`], [`Edge::deduct`], [`Edge::orders`],
//!   [`Edge::payment_callback`], [`Edge::admin`]
#![deny(missing_docs)]

pub mod http;

use std::fmt;

use flashcart_core::ids::{
    BuyerId, Currency, IdempotencyKey, OrderId, PspEventId, Quantity, ReservationId, SkuId,
};
use flashcart_core::inventory::{
    CancelReason, LoadOutcome, OrderRequest, PaymentNotice, ReserveRequest, Reserved, StockHint,
    StockLevels,
};
use flashcart_core::order::OrderState;
use flashcart_core::signature::{self, SigningSecret};
use flashcart_core::sku::SkuSpec;
use flashcart_core::{Inventory, Now, Partition, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, DeductPlan, EdgeCache, KvStore, Lookup};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};

pub use http::{ApiRequest, ApiResponse};

/// A secret that never prints itself (the admin token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

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

/// A stock read as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockView {
    /// The SKU.
    pub sku: String,
    /// Units loaded.
    pub stock: u64,
    /// Units free to reserve.
    pub available: u64,
    /// Units held by reservations.
    pub reserved: u64,
    /// Units in unpaid orders.
    pub ordered: u64,
    /// Units sold.
    pub sold: u64,
    /// Whether nothing is free.
    pub sold_out: bool,
    /// Price of one unit, minor units.
    pub price: u64,
    /// Currency.
    pub currency: String,
    /// Sale opens, unix ms.
    pub sale_start: u64,
    /// Sale closes, unix ms.
    pub sale_end: u64,
}

impl StockView {
    fn of(sku: &SkuId, levels: &StockLevels) -> Self {
        Self {
            sku: sku.to_string(),
            stock: levels.terms.stock,
            available: levels.available(),
            reserved: levels.reserved(),
            ordered: levels.ordered(),
            sold: levels.sold(),
            sold_out: levels.available() == 0,
            price: levels.terms.price,
            currency: levels.terms.currency.clone(),
            sale_start: levels.terms.sale_start,
            sale_end: levels.terms.sale_end,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeductBody {
    buyer_id: String,
    quantity: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    reservation_id: String,
    buyer_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    buyer_id: String,
}

#[derive(Deserialize)]
struct PaymentBody {
    event_id: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    order_id: String,
    amount: u64,
    currency: String,
}

fn idempotency_key(req: &ApiRequest) -> Result<IdempotencyKey, Rejection> {
    let raw = req
        .header_value("idempotency-key")
        .ok_or(Rejection::MissingIdempotencyKey)?;
    Ok(IdempotencyKey::parse(raw)?)
}

fn replay_header(resp: ApiResponse, replayed: bool) -> ApiResponse {
    if replayed {
        resp.with_header("idempotent-replayed", "true")
    } else {
        resp
    }
}

/// Compares two secrets in constant time (HMAC both under a fixed key, then verify).
fn same_secret(given: &str, expected: &Secret) -> bool {
    let tag = |v: &str| {
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"flashcart-admin")
            .expect("any key length");
        m.update(v.as_bytes());
        m
    };
    tag(&expected.0)
        .verify_slice(&tag(given).finalize().into_bytes())
        .is_ok()
}

/// Sold out, answered from the edge cache without asking Redis.
fn sold_out_here() -> ApiResponse {
    ApiResponse::problem(&Rejection::SoldOut).with_header("flashcart-cache", "sold-out")
}

fn hint_of(segments: Option<u16>, empty: impl IntoIterator<Item = u16>) -> StockHint {
    StockHint {
        segments,
        empty: empty.into_iter().map(Partition::new).collect(),
    }
}

fn respond(result: Result<ApiResponse, Rejection>) -> ApiResponse {
    result.unwrap_or_else(|r| ApiResponse::problem(&r))
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

    /// `GET /v1/stock/{sku}`: served from the edge cache while fresh (or stale while one
    /// request refreshes), from Redis otherwise.
    pub async fn stock_check(&self, req: &ApiRequest, request_id: &str) -> ApiResponse {
        respond(self.stock_check_inner(req, request_id).await)
    }

    async fn stock_check_inner(
        &self,
        req: &ApiRequest,
        request_id: &str,
    ) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/stock/")
            .ok_or(Rejection::NotFound)?;
        let [sku] = segs.as_slice() else {
            return Err(Rejection::NotFound);
        };
        if req.method != "GET" {
            return Err(Rejection::MethodNotAllowed { allow: "GET" });
        }
        let sku = SkuId::parse(sku)?;
        let lookup = self
            .cache
            .lookup::<StockView>(sku.as_str(), request_id)
            .await
            .unwrap_or(Lookup::Miss);
        let stale = match lookup {
            Lookup::Fresh { value, age_ms }
            | Lookup::Stale {
                value,
                age_ms,
                refresh: false,
            } => {
                return Ok(self.stock_response(&value, age_ms, "hit"));
            }
            Lookup::Unknown => return Err(Rejection::UnknownSku),
            Lookup::Stale {
                value,
                age_ms,
                refresh: true,
            } => Some((value, age_ms)),
            Lookup::Miss => None,
        };
        match self.inventory.stock(&sku).await {
            Ok(levels) => {
                let view = StockView::of(&sku, &levels);
                let _ = self.cache.put(sku.as_str(), &view).await;
                Ok(self.stock_response(&view, 0, "miss"))
            }
            Err(Rejection::UnknownSku) => {
                let _ = self.cache.put_unknown(sku.as_str()).await;
                Err(Rejection::UnknownSku)
            }
            // Redis unreachable: a stale answer beats none.
            Err(Rejection::Unavailable(_) | Rejection::Unreachable(_)) if stale.is_some() => {
                let (value, age_ms) = stale.unwrap_or_else(|| unreachable!());
                Ok(self.stock_response(&value, age_ms, "stale-on-error"))
            }
            Err(e) => Err(e),
        }
    }

    fn stock_response(&self, view: &StockView, age_ms: u64, cache: &str) -> ApiResponse {
        let c = self.cache.config();
        ApiResponse::json(200, view)
            .with_header(
                "cache-control",
                format!(
                    "public, max-age=0, stale-while-revalidate={}",
                    c.max_stale_ms.div_ceil(1000)
                ),
            )
            .with_header("age", (age_ms / 1000).to_string())
            .with_header("flashcart-cache", cache)
            .with_header(
                "flashcart-max-staleness-ms",
                (c.staleness_ms + c.jitter_ms).to_string(),
            )
    }

    /// `POST /v1/stock/{sku}/reservations`: the deduct. `request_id` names the request for
    /// the edge cache's re-check lease.
    pub async fn deduct(&self, req: &ApiRequest, request_id: &str) -> ApiResponse {
        respond(self.deduct_inner(req, request_id).await)
    }

    async fn deduct_inner(
        &self,
        req: &ApiRequest,
        request_id: &str,
    ) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/stock/")
            .ok_or(Rejection::NotFound)?;
        let [sku, "reservations"] = segs.as_slice() else {
            return Err(Rejection::NotFound);
        };
        if req.method != "POST" {
            return Err(Rejection::MethodNotAllowed { allow: "POST" });
        }
        let sku = SkuId::parse(sku)?;
        http::check_json_body(req, self.config.max_body_bytes)?;
        let key = idempotency_key(req)?;
        let body: DeductBody = http::parse_json(&req.body)?;
        let buyer = BuyerId::parse(&body.buyer_id)?;
        let quantity = Quantity::new(body.quantity)?;

        // What this node knows of the SKU's partitions decides whether Redis is asked at all.
        let plan = self
            .cache
            .plan_deduct(sku.as_str(), request_id)
            .await
            .unwrap_or(DeductPlan::Reserve {
                segments: None,
                empty: Vec::new(),
            });
        let hint = match plan {
            DeductPlan::SoldOut => return Ok(sold_out_here()),
            DeductPlan::Probe {
                partition,
                segments,
                empty,
            } => {
                match self
                    .inventory
                    .available_in(&sku, Partition::new(partition))
                    .await
                {
                    Ok(left) => {
                        let _ = self.cache.probed(sku.as_str(), partition, left).await;
                        if left == 0 {
                            return Ok(sold_out_here());
                        }
                        hint_of(
                            Some(segments),
                            empty.into_iter().filter(|&p| p != partition),
                        )
                    }
                    // Redis unreachable: the sold-out answer it gave last beats none.
                    Err(Rejection::Unavailable(_) | Rejection::Unreachable(_)) => {
                        return Ok(sold_out_here());
                    }
                    Err(e) => return Err(e),
                }
            }
            DeductPlan::Reserve { segments, empty } => hint_of(segments, empty),
        };
        let request = ReserveRequest {
            sku: sku.clone(),
            buyer,
            quantity,
            key,
            fingerprint: flashcart_core::fingerprint(sku.as_str(), &req.body),
        };
        let reserved = self
            .inventory
            .reserve_hinted(&request, &hint, Now::Server)
            .await;
        self.learn(&sku, &hint, &reserved).await;
        let mut resp = match reserved.result {
            Ok(r) => replay_header(
                ApiResponse::json(
                    201,
                    &serde_json::json!({
                        "reservation_id": r.id.to_string(),
                        "sku": sku.as_str(),
                        "quantity": quantity.get(),
                        "segment": r.segment,
                        "expires_at": r.expires_at,
                    }),
                ),
                r.replayed,
            ),
            Err(e @ Rejection::RateLimited { retry_after_ms }) => {
                let reset = retry_after_ms.div_ceil(1000).max(1);
                // A refusal found less than one token: none left.
                ApiResponse::problem(&e)
                    .with_header("retry-after", reset.to_string())
                    .with_header("ratelimit", format!("\"buyer\";r=0;t={reset}"))
            }
            Err(e) => ApiResponse::problem(&e),
        };
        if let Some(limit) = self.inventory.settings().buyer_rate {
            let window = limit.capacity.div_ceil(limit.refill_per_second.max(1));
            resp = resp.with_header(
                "ratelimit-policy",
                format!("\"buyer\";q={};w={window}", limit.capacity),
            );
        }
        Ok(resp)
    }

    /// Tells the edge cache what a reserve saw, when that can change what it knows: a
    /// partition found empty, one believed empty that has units, the SKU's layout, or a
    /// sold-out answer.
    async fn learn(&self, sku: &SkuId, hint: &StockHint, reserved: &Reserved) {
        let sold_out = reserved.result == Err(Rejection::SoldOut);
        let news = sold_out
            || (hint.segments.is_none() && reserved.segments.is_some())
            || reserved
                .seen
                .iter()
                .any(|(p, left)| *left == 0 || hint.empty.contains(p));
        if !news {
            return;
        }
        let partitions: Vec<u16> = reserved
            .segments
            .map(|n| {
                self.inventory
                    .schema()
                    .sku_partitions(sku, n)
                    .iter()
                    .map(|p| p.index())
                    .collect()
            })
            .unwrap_or_default();
        let seen: Vec<(u16, u64)> = reserved
            .seen
            .iter()
            .map(|(p, left)| (p.index(), *left))
            .collect();
        let _ = self
            .cache
            .observe(
                sku.as_str(),
                reserved.segments,
                &partitions,
                &seen,
                sold_out,
            )
            .await;
    }

    /// `POST /v1/orders` (create from a reservation) and `GET /v1/orders/{id}`.
    pub async fn orders(&self, req: &ApiRequest) -> ApiResponse {
        respond(self.orders_inner(req).await)
    }

    async fn orders_inner(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/orders")
            .ok_or(Rejection::NotFound)?;
        match (segs.as_slice(), req.method.as_str()) {
            ([], "POST") => {
                http::check_json_body(req, self.config.max_body_bytes)?;
                let key = idempotency_key(req)?;
                let body: OrderBody = http::parse_json(&req.body)?;
                let request = OrderRequest {
                    reservation: ReservationId::parse(&body.reservation_id)?,
                    buyer: BuyerId::parse(&body.buyer_id)?,
                    key,
                    fingerprint: flashcart_core::fingerprint("", &req.body),
                };
                let order = self.inventory.create_order(&request, Now::Server).await?;
                let replayed = order.replayed;
                Ok(replay_header(
                    ApiResponse::json(201, &order)
                        .with_header("location", format!("/v1/orders/{}", order.id)),
                    replayed,
                ))
            }
            ([], _) => Err(Rejection::MethodNotAllowed { allow: "POST" }),
            ([id], "GET") => {
                let order = self.inventory.order(&OrderId::parse(id)?).await?;
                Ok(ApiResponse::json(200, &order))
            }
            ([_], _) => Err(Rejection::MethodNotAllowed { allow: "GET" }),
            ([id, "cancel"], "POST") => self.cancel_order(req, id).await,
            ([_, "cancel"], _) => Err(Rejection::MethodNotAllowed { allow: "POST" }),
            _ => Err(Rejection::NotFound),
        }
    }

    /// `POST /v1/orders/{id}/cancel`: the buyer cancels an order awaiting payment; its units
    /// go back on sale and the ledger hears of it (`order.cancelled`, reason `buyer`).
    /// Idempotent: an order cancelled already (by an earlier call, or by its payment deadline)
    /// answers the same 200, marked replayed. To anyone but its buyer the order does not exist.
    async fn cancel_order(&self, req: &ApiRequest, id: &str) -> Result<ApiResponse, Rejection> {
        http::check_json_body(req, self.config.max_body_bytes)?;
        let body: CancelBody = http::parse_json(&req.body)?;
        let id = OrderId::parse(id)?;
        let buyer = BuyerId::parse(&body.buyer_id)?;
        if self.inventory.order(&id).await?.buyer != buyer.as_str() {
            return Err(Rejection::UnknownOrder);
        }
        let replayed = match self
            .inventory
            .cancel_order(&id, CancelReason::Buyer, Now::Server)
            .await
        {
            Ok(_) => false,
            Err(Rejection::IllegalTransition { state })
                if state == OrderState::Cancelled.as_str() =>
            {
                true
            }
            Err(e) => return Err(e),
        };
        let order = self.inventory.order(&id).await?;
        Ok(replay_header(ApiResponse::json(200, &order), replayed))
    }

    /// `POST /v1/payments/callback`: the payment provider's signed webhook. Answers 2xx once
    /// the event is recorded (the provider stops retrying), 5xx when it could not be (the
    /// provider retries), 4xx for what no retry can fix.
    pub async fn payment_callback(&self, req: &ApiRequest) -> ApiResponse {
        respond(self.payment_inner(req).await)
    }

    async fn payment_inner(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        if req.path.trim_end_matches('/') != "/v1/payments/callback" {
            return Err(Rejection::NotFound);
        }
        if req.method != "POST" {
            return Err(Rejection::MethodNotAllowed { allow: "POST" });
        }
        if req.body.len() > self.config.max_body_bytes {
            return Err(Rejection::PayloadTooLarge);
        }
        // The signature covers the raw body: verify before reading anything from it.
        signature::verify(
            req.header_value(signature::HEADER),
            &req.body,
            &self.config.psp_secrets,
            self.clock.now_ms() / 1000,
            self.config.signature_tolerance_s,
        )
        .map_err(|e| Rejection::InvalidSignature(e.to_string()))?;
        http::check_json_body(req, self.config.max_body_bytes)?;
        let body: PaymentBody = http::parse_json(&req.body)?;
        let event_id = PspEventId::parse(&body.event_id)?;
        if body
            .kind
            .as_deref()
            .is_some_and(|k| k != "payment.succeeded")
        {
            return Ok(ApiResponse::json(
                200,
                &serde_json::json!({ "received": true, "outcome": "ignored" }),
            ));
        }
        let notice = PaymentNotice {
            order: OrderId::parse(&body.order_id)?,
            event_id,
            amount: body.amount,
            currency: Currency::parse(&body.currency)?,
        };
        let (outcome, replayed) = self.inventory.apply_payment(&notice, Now::Server).await?;
        Ok(replay_header(
            ApiResponse::json(
                200,
                &serde_json::json!({ "received": true, "outcome": outcome, "replayed": replayed }),
            ),
            replayed,
        ))
    }

    /// `PUT /v1/admin/skus/{sku}` (load, preheat) and `GET /v1/admin/skus/{sku}` (full state).
    /// Bearer token required; nothing changes without it.
    pub async fn admin(&self, req: &ApiRequest) -> ApiResponse {
        respond(self.admin_inner(req).await)
    }

    async fn admin_inner(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/admin/skus/")
            .ok_or(Rejection::NotFound)?;
        let [sku] = segs.as_slice() else {
            return Err(Rejection::NotFound);
        };
        let token = req
            .header_value("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.config.admin_token, token) {
            (Some(expected), Some(given)) if same_secret(given, expected) => {}
            _ => return Err(Rejection::Unauthorized),
        }
        let sku = SkuId::parse(sku)?;
        match req.method.as_str() {
            "PUT" => {
                http::check_json_body(req, self.config.max_body_bytes)?;
                let mut body: serde_json::Map<String, serde_json::Value> =
                    http::parse_json(&req.body)?;
                match body.get("sku") {
                    Some(v) if v.as_str() != Some(sku.as_str()) => {
                        return Err(Rejection::Invalid(
                            flashcart_core::ids::ValidationError::new(
                                "sku",
                                "differs from the SKU in the path",
                            ),
                        ));
                    }
                    _ => {}
                }
                body.insert("sku".into(), sku.as_str().into());
                let spec: SkuSpec =
                    http::parse_json(&serde_json::to_vec(&body).unwrap_or_default())?;
                let outcome = self.inventory.load_sku(&spec, Now::Server).await?;
                let _ = self.cache.invalidate(sku.as_str()).await;
                let (status, word) = match outcome {
                    LoadOutcome::Loaded => (201, "loaded"),
                    LoadOutcome::Unchanged => (200, "unchanged"),
                };
                Ok(ApiResponse::json(
                    status,
                    &serde_json::json!({ "sku": sku.as_str(), "outcome": word }),
                ))
            }
            "GET" => {
                let levels = self.inventory.stock(&sku).await?;
                Ok(ApiResponse::json(
                    200,
                    &serde_json::json!({
                        "sku": sku.as_str(),
                        "terms": levels.terms,
                        "totals": StockView::of(&sku, &levels),
                        "segments": levels.segments,
                        "invariant_holds": levels.invariant_holds(),
                    }),
                ))
            }
            _ => Err(Rejection::MethodNotAllowed { allow: "GET, PUT" }),
        }
    }
}
