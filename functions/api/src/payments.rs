//! `POST /v1/payments/callback`: the payment provider's signed webhook.

use flashcart_core::ids::{Currency, OrderId, PspEventId};
use flashcart_core::inventory::{PaymentNotice, PaymentOutcome};
use flashcart_core::signature;
use flashcart_core::{Now, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore};
use serde::{Deserialize, Serialize};

use crate::{ApiRequest, ApiResponse, Edge, http, replay_header, respond};

/// The payment provider's event. Fields it adds that flashcart does not read are ignored.
#[derive(Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "PaymentEvent")
)]
pub(crate) struct PaymentBody {
    /// The provider's event id: its retries carry the same one.
    #[cfg_attr(feature = "openapi", schemars(with = "PspEventId"))]
    event_id: String,
    /// Only `payment.succeeded` (or none) is applied; other types are acknowledged and
    /// ignored.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// The order paid for.
    #[cfg_attr(feature = "openapi", schemars(with = "OrderId"))]
    order_id: String,
    /// Amount paid, minor units.
    amount: u64,
    /// Currency paid in.
    #[cfg_attr(feature = "openapi", schemars(with = "Currency"))]
    currency: String,
}

/// What became of the event (200): recorded, so the provider stops retrying.
#[derive(Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "PaymentReceipt")
)]
pub(crate) struct Receipt {
    /// Always true.
    received: bool,
    /// What the payment did, or `ignored` for an event type flashcart does not apply.
    outcome: ReceiptOutcome,
    /// Whether this answers a retry of an event recorded before (absent when ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<bool>,
}

/// A payment's outcome, or `ignored`.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub(crate) enum ReceiptOutcome {
    /// The payment was applied (or its earlier outcome replayed).
    Applied(PaymentOutcome),
    /// Not a payment flashcart applies.
    Ignored(Ignored),
}

/// The outcome of an event type flashcart does not apply.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub(crate) enum Ignored {
    /// Acknowledged, nothing done.
    Ignored,
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
                &Receipt {
                    received: true,
                    outcome: ReceiptOutcome::Ignored(Ignored::Ignored),
                    replayed: None,
                },
            ));
        }
        let notice = PaymentNotice {
            request: req.request_id(),
            order: OrderId::parse(&body.order_id)?,
            event_id,
            amount: body.amount,
            currency: Currency::parse(&body.currency)?,
        };
        let (outcome, replayed) = self.inventory.apply_payment(&notice, Now::Server).await?;
        Ok(replay_header(
            ApiResponse::json(
                200,
                &Receipt {
                    received: true,
                    outcome: ReceiptOutcome::Applied(outcome),
                    replayed: Some(replayed),
                },
            ),
            replayed,
        ))
    }
}
