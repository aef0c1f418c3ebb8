//! `POST /v1/stock/{sku}/reservations`: the deduct. The node's stock map of the SKU decides
//! first whether Redis is asked at all (sold out here), and which partitions the reserve
//! skips (its stock hint); what the reserve saw goes back into the map.

use flashcart_core::ids::{BuyerId, IdempotencyKey, Quantity, RequestId, ReservationId, SkuId};
use flashcart_core::inventory::{Reservation, ReserveRequest, Reserved, StockHint};
use flashcart_core::{Now, Partition, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, DeductPlan, KvStore};
use serde::{Deserialize, Serialize};

use crate::{ApiRequest, ApiResponse, Edge, http, idempotency_key, replay_header, respond};

/// What a buyer asks for.
// The fields are read as plain JSON and validated by the types they become (named in
// `schemars(with)`, whose schemas are built from that validation), so a bad value is a 400
// naming its field.
#[derive(Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "DeductRequest")
)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeductBody {
    /// The buyer.
    #[cfg_attr(feature = "openapi", schemars(with = "BuyerId"))]
    buyer_id: String,
    /// Units to reserve.
    #[cfg_attr(feature = "openapi", schemars(with = "Quantity"))]
    quantity: u64,
}

/// A reservation taken (201): the units are held for the buyer until `expires_at`.
#[derive(Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "Reservation")
)]
pub(crate) struct ReservationView<'a> {
    /// Its id; `POST /v1/orders` turns it into an order.
    reservation_id: ReservationId,
    /// The SKU.
    sku: &'a SkuId,
    /// Units held.
    quantity: Quantity,
    /// The segment the units came from.
    segment: u16,
    /// When the hold ends unless ordered, unix ms.
    expires_at: u64,
}

/// A deduct as parsed from its request, before the node decides whether to ask Redis.
struct Deduct {
    sku: SkuId,
    buyer: BuyerId,
    quantity: Quantity,
    key: IdempotencyKey,
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

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// `POST /v1/stock/{sku}/reservations`: the deduct. `request_id` (as the glue identified
    /// the request) names it in the reservation's event and in the edge cache's re-check
    /// lease.
    pub async fn deduct(&self, req: &ApiRequest, request_id: &RequestId) -> ApiResponse {
        respond(self.deduct_inner(req, request_id).await)
    }

    async fn deduct_inner(
        &self,
        req: &ApiRequest,
        request_id: &RequestId,
    ) -> Result<ApiResponse, Rejection> {
        let deduct = self.parse_deduct(req)?;
        // What this node knows of the SKU's partitions decides whether Redis is asked at all.
        let Some(hint) = self.stock_hint(&deduct.sku, request_id.as_str()).await? else {
            return Ok(sold_out_here());
        };
        let quantity = deduct.quantity;
        let request = ReserveRequest {
            request: Some(request_id.clone()),
            fingerprint: flashcart_core::fingerprint(deduct.sku.as_str(), &req.body),
            sku: deduct.sku,
            buyer: deduct.buyer,
            quantity,
            key: deduct.key,
        };
        let reserved = self
            .inventory
            .reserve_hinted(&request, &hint, Now::Server)
            .await;
        self.learn(&request.sku, &hint, &reserved).await;
        Ok(self.deduct_response(&request.sku, quantity, reserved.result))
    }

    fn parse_deduct(&self, req: &ApiRequest) -> Result<Deduct, Rejection> {
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
        Ok(Deduct {
            sku,
            buyer: BuyerId::parse(&body.buyer_id)?,
            quantity: Quantity::new(body.quantity)?,
            key,
        })
    }

    /// The reserve's stock hint from the node's stock map, or `None` when the SKU is sold out
    /// at this node (re-checking, with one read-only call, the partition seen empty longest
    /// ago when it is this request's turn).
    async fn stock_hint(
        &self,
        sku: &SkuId,
        request_id: &str,
    ) -> Result<Option<StockHint>, Rejection> {
        let plan = self
            .cache
            .plan_deduct(sku.as_str(), request_id)
            .await
            .unwrap_or(DeductPlan::Reserve {
                segments: None,
                empty: Vec::new(),
            });
        let (partition, segments, empty) = match plan {
            DeductPlan::SoldOut => return Ok(None),
            DeductPlan::Reserve { segments, empty } => return Ok(Some(hint_of(segments, empty))),
            DeductPlan::Probe {
                partition,
                segments,
                empty,
            } => (partition, segments, empty),
        };
        match self
            .inventory
            .available_in(sku, Partition::new(partition))
            .await
        {
            Ok(left) => {
                let _ = self.cache.probed(sku.as_str(), partition, left).await;
                Ok((left > 0).then(|| {
                    hint_of(
                        Some(segments),
                        empty.into_iter().filter(|&p| p != partition),
                    )
                }))
            }
            // Redis unreachable: the sold-out answer it gave last beats none.
            Err(Rejection::Unavailable(_) | Rejection::Unreachable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn deduct_response(
        &self,
        sku: &SkuId,
        quantity: Quantity,
        result: Result<Reservation, Rejection>,
    ) -> ApiResponse {
        let resp = match result {
            Ok(r) => replay_header(
                ApiResponse::json(
                    201,
                    &ReservationView {
                        reservation_id: r.id,
                        sku,
                        quantity,
                        segment: r.segment,
                        expires_at: r.expires_at,
                    },
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
        match self.inventory.settings().buyer_rate {
            Some(limit) => {
                let window = limit.capacity.div_ceil(limit.refill_per_second.max(1));
                resp.with_header(
                    "ratelimit-policy",
                    format!("\"buyer\";q={};w={window}", limit.capacity),
                )
            }
            None => resp,
        }
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
}
