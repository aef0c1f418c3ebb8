//! `POST /v1/payments/callback`: the payment provider's signed webhook.

use flashcart_core::ids::{Currency, OrderId, PspEventId};
use flashcart_core::inventory::PaymentNotice;
use flashcart_core::signature;
use flashcart_core::{Now, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore};
use serde::Deserialize;

use crate::{ApiRequest, ApiResponse, Edge, http, replay_header, respond};

#[derive(Deserialize)]
struct PaymentBody {
    event_id: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    order_id: String,
    amount: u64,
    currency: String,
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
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
}
