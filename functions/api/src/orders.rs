//! `POST /v1/orders` (an order from a reservation), `GET /v1/orders/{id}`, and
//! `POST /v1/orders/{id}/cancel` (the buyer cancels an unpaid order).

use flashcart_core::ids::{BuyerId, OrderId, ReservationId};
use flashcart_core::inventory::{CancelReason, OrderRequest};
use flashcart_core::order::OrderState;
use flashcart_core::{Now, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore};
use serde::Deserialize;

use crate::{ApiRequest, ApiResponse, Edge, http, idempotency_key, replay_header, respond};

/// An order from the buyer's reservation.
#[derive(Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "OrderRequest")
)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderBody {
    /// The reservation, as the deduct answered it.
    #[cfg_attr(feature = "openapi", schemars(with = "ReservationId"))]
    reservation_id: String,
    /// The buyer who holds it.
    #[cfg_attr(feature = "openapi", schemars(with = "BuyerId"))]
    buyer_id: String,
}

/// The buyer cancels an order awaiting payment.
#[derive(Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "CancelRequest")
)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    /// The order's buyer; to anyone else the order does not exist (404).
    #[cfg_attr(feature = "openapi", schemars(with = "BuyerId"))]
    buyer_id: String,
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// `POST /v1/orders` (create from a reservation), `GET /v1/orders/{id}` and
    /// `POST /v1/orders/{id}/cancel`.
    pub async fn orders(&self, req: &ApiRequest) -> ApiResponse {
        respond(self.orders_inner(req).await)
    }

    async fn orders_inner(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/orders")
            .ok_or(Rejection::NotFound)?;
        match (segs.as_slice(), req.method.as_str()) {
            ([], "POST") => self.create_order(req).await,
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

    /// `POST /v1/orders`: an order awaiting payment from the buyer's reservation.
    async fn create_order(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        http::check_json_body(req, self.config.max_body_bytes)?;
        let key = idempotency_key(req)?;
        let body: OrderBody = http::parse_json(&req.body)?;
        let request = OrderRequest {
            request: req.request_id(),
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
            .cancel_order_for(
                &id,
                CancelReason::Buyer,
                Now::Server,
                req.request_id().as_ref(),
            )
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
}
