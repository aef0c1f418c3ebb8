//! Problem details (RFC 9457) and the domain's rejections, each with a stable `type` and an
//! HTTP status.
//!
//! Expected outcomes (sold out, limit reached, not on sale) are rejections with a status,
//! not errors to log. Only [`Rejection::Unavailable`] means something is broken.

use serde::{Deserialize, Serialize};

use crate::ids::ValidationError;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable URI naming the kind of problem, e.g. `urn:flashcart:problem:sold-out`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind (the same for every occurrence).
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extra members (e.g. `field`, `retry_after_ms`, `order_id`).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// The body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Why the domain refused a request. Every variant maps to one status and one problem type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// An input failed validation (400). Nothing is stored.
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
    /// Every input is valid on its own, but they disagree with each other (422): a SKU's
    /// segments outnumber its units, its sale ends before it starts, a body names another SKU
    /// than the path. Nothing is stored.
    #[error("inconsistent request: {0}")]
    Inconsistent(ValidationError),
    /// A mutating call came without an `Idempotency-Key` (400).
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    /// The key was used before with another request body (422).
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The first request with this key is still being processed (409).
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyInFlight,
    /// No such SKU (404).
    #[error("unknown SKU")]
    UnknownSku,
    /// The sale has not started (409).
    #[error("the sale has not started")]
    NotOnSale {
        /// When it starts, unix ms.
        starts_at: u64,
    },
    /// The sale is over (410).
    #[error("the sale has ended")]
    SaleEnded,
    /// Every unit is reserved or sold (409).
    #[error("sold out")]
    SoldOut,
    /// Some units are left, but fewer than asked (409).
    #[error("fewer units left than asked for")]
    Insufficient,
    /// The buyer reached the per-buyer limit (409).
    #[error("purchase limit reached")]
    LimitReached {
        /// Units the buyer may still take.
        remaining: u64,
    },
    /// No such reservation for this buyer (404).
    #[error("unknown reservation")]
    UnknownReservation,
    /// The reservation expired or was released (410).
    #[error("the reservation is no longer active")]
    ReservationGone,
    /// An order was already made from this reservation (409).
    #[error("an order was already created from this reservation")]
    AlreadyOrdered {
        /// That order.
        order_id: String,
    },
    /// No such order (404).
    #[error("unknown order")]
    UnknownOrder,
    /// The order's state does not allow this (409); recorded, never applied.
    #[error("illegal transition from {state}")]
    IllegalTransition {
        /// The order's state.
        state: String,
    },
    /// A SKU with these id but other terms exists (409).
    #[error("the SKU exists with other terms")]
    SkuConflict,
    /// Too many requests (429).
    #[error("rate limited")]
    RateLimited {
        /// When to retry, in ms.
        retry_after_ms: u64,
    },
    /// Missing or wrong credentials (401).
    #[error("unauthorized")]
    Unauthorized,
    /// The payment signature did not verify (400).
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// The request body is too large (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body is not JSON (415).
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// No such resource (404).
    #[error("no such route")]
    NotFound,
    /// The route exists, the method does not (405).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route takes, for the `Allow` header.
        allow: &'static str,
    },
    /// The partition this request needs is fenced (503, `Retry-After`): Redis restarted and
    /// settlement has not yet checked it against the ledger (or is restoring it). Nothing was
    /// written; retry shortly.
    #[error("this part of the inventory is being checked after a restart; retry shortly")]
    Fenced,
    /// The inventory could not be reached or answered unexpectedly (503); retry later. The
    /// text is the cause for the operator's log; the buyer's problem body never carries it
    /// (a Redis client's message names hosts, scripts and internals).
    #[error("inventory unavailable: {0}")]
    Unavailable(String),
    /// The inventory cannot be reached as deployed (503; retry later): no Redis node answers
    /// at the configured address, a node is outside the allowed hosts, a seed list names a
    /// plain Redis, a variable is missing. The same problem type as
    /// [`Rejection::Unavailable`], but the detail names the node and the cause in flashcart's
    /// own words, for whoever runs the deployment.
    #[error("{0}")]
    Unreachable(String),
    /// `durability = replicated`: no replica confirmed the write in time, or the master
    /// refused to write without one (503, `Retry-After`). The request may have been decided
    /// and stored on the master: a retry with the same Idempotency-Key gets that decision,
    /// never a second one. The text is flashcart's own words (which node, how long).
    #[error("{0}; the request may have been decided: retry with the same Idempotency-Key")]
    NotReplicated(String),
}

impl Rejection {
    /// Whether the request was refused before anything was decided or written, so a key it
    /// claimed is given back and the buyer may fix the request and retry with the same key.
    /// Unavailable is not: the call may have decided before the connection broke, and only a
    /// replay with the same request may learn what it decided.
    pub fn decided_nothing(&self) -> bool {
        match self {
            Rejection::Invalid(_)
            | Rejection::Inconsistent(_)
            | Rejection::MissingIdempotencyKey
            | Rejection::UnknownSku
            | Rejection::NotOnSale { .. }
            | Rejection::SaleEnded
            | Rejection::UnknownReservation
            | Rejection::ReservationGone
            | Rejection::AlreadyOrdered { .. }
            | Rejection::UnknownOrder
            | Rejection::RateLimited { .. }
            | Rejection::Unauthorized
            | Rejection::InvalidSignature(_)
            | Rejection::PayloadTooLarge
            | Rejection::UnsupportedMediaType
            | Rejection::NotFound
            | Rejection::MethodNotAllowed { .. }
            | Rejection::Fenced => true,
            Rejection::IdempotencyMismatch
            | Rejection::IdempotencyInFlight
            | Rejection::SoldOut
            | Rejection::Insufficient
            | Rejection::LimitReached { .. }
            | Rejection::IllegalTransition { .. }
            | Rejection::SkuConflict
            | Rejection::Unavailable(_)
            | Rejection::Unreachable(_)
            | Rejection::NotReplicated(_) => false,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Invalid(_)
            | Rejection::MissingIdempotencyKey
            | Rejection::InvalidSignature(_) => 400,
            Rejection::Unauthorized => 401,
            Rejection::UnknownSku
            | Rejection::UnknownReservation
            | Rejection::UnknownOrder
            | Rejection::NotFound => 404,
            Rejection::MethodNotAllowed { .. } => 405,
            Rejection::IdempotencyInFlight
            | Rejection::NotOnSale { .. }
            | Rejection::SoldOut
            | Rejection::Insufficient
            | Rejection::LimitReached { .. }
            | Rejection::AlreadyOrdered { .. }
            | Rejection::IllegalTransition { .. }
            | Rejection::SkuConflict => 409,
            Rejection::SaleEnded | Rejection::ReservationGone => 410,
            Rejection::PayloadTooLarge => 413,
            Rejection::UnsupportedMediaType => 415,
            Rejection::IdempotencyMismatch | Rejection::Inconsistent(_) => 422,
            Rejection::RateLimited { .. } => 429,
            Rejection::Fenced
            | Rejection::Unavailable(_)
            | Rejection::Unreachable(_)
            | Rejection::NotReplicated(_) => 503,
        }
    }

    /// The stable slug of the problem type.
    pub fn slug(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid-request",
            Rejection::Inconsistent(_) => "inconsistent-request",
            Rejection::MissingIdempotencyKey => "idempotency-key-missing",
            Rejection::IdempotencyMismatch => "idempotency-key-reused",
            Rejection::IdempotencyInFlight => "idempotency-key-in-flight",
            Rejection::UnknownSku => "unknown-sku",
            Rejection::NotOnSale { .. } => "not-on-sale",
            Rejection::SaleEnded => "sale-ended",
            Rejection::SoldOut => "sold-out",
            Rejection::Insufficient => "insufficient-stock",
            Rejection::LimitReached { .. } => "purchase-limit-reached",
            Rejection::UnknownReservation => "unknown-reservation",
            Rejection::ReservationGone => "reservation-gone",
            Rejection::AlreadyOrdered { .. } => "reservation-already-ordered",
            Rejection::UnknownOrder => "unknown-order",
            Rejection::IllegalTransition { .. } => "illegal-transition",
            Rejection::SkuConflict => "sku-conflict",
            Rejection::RateLimited { .. } => "rate-limited",
            Rejection::Unauthorized => "unauthorized",
            Rejection::InvalidSignature(_) => "invalid-signature",
            Rejection::PayloadTooLarge => "payload-too-large",
            Rejection::UnsupportedMediaType => "unsupported-media-type",
            Rejection::NotFound => "not-found",
            Rejection::MethodNotAllowed { .. } => "method-not-allowed",
            Rejection::Fenced => "inventory-recovering",
            Rejection::Unavailable(_) | Rejection::Unreachable(_) => "inventory-unavailable",
            Rejection::NotReplicated(_) => "inventory-not-replicated",
        }
    }

    /// The problem details body.
    pub fn problem(&self) -> Problem {
        let mut extensions = serde_json::Map::new();
        match self {
            Rejection::Invalid(e) | Rejection::Inconsistent(e) => {
                extensions.insert("field".into(), e.field.into());
            }
            Rejection::NotOnSale { starts_at } => {
                extensions.insert("starts_at".into(), (*starts_at).into());
            }
            Rejection::LimitReached { remaining } => {
                extensions.insert("remaining".into(), (*remaining).into());
            }
            Rejection::AlreadyOrdered { order_id } => {
                extensions.insert("order_id".into(), order_id.clone().into());
            }
            Rejection::IllegalTransition { state } => {
                extensions.insert("state".into(), state.clone().into());
            }
            Rejection::RateLimited { retry_after_ms } => {
                extensions.insert("retry_after_ms".into(), (*retry_after_ms).into());
            }
            _ => {}
        }
        Problem {
            kind: format!("urn:flashcart:problem:{}", self.slug()),
            title: title_of(self.slug()),
            status: self.status(),
            detail: Some(match self {
                Rejection::Unavailable(_) => UNAVAILABLE_DETAIL.to_owned(),
                _ => self.to_string(),
            }),
            extensions,
        }
    }
}

/// What a buyer reads when the inventory could not answer: the cause goes to the log only.
pub const UNAVAILABLE_DETAIL: &str = "the inventory could not answer; retry shortly";

fn title_of(slug: &str) -> String {
    let mut title = slug.replace('-', " ");
    if let Some(first) = title.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Rejection> {
        vec![
            Rejection::Invalid(ValidationError::new("sku", "bad")),
            Rejection::Inconsistent(ValidationError::new("sale_end", "before")),
            Rejection::MissingIdempotencyKey,
            Rejection::IdempotencyMismatch,
            Rejection::IdempotencyInFlight,
            Rejection::UnknownSku,
            Rejection::NotOnSale { starts_at: 5 },
            Rejection::SaleEnded,
            Rejection::SoldOut,
            Rejection::Insufficient,
            Rejection::LimitReached { remaining: 0 },
            Rejection::UnknownReservation,
            Rejection::ReservationGone,
            Rejection::AlreadyOrdered {
                order_id: "ord_01_0123456789abcdef".into(),
            },
            Rejection::UnknownOrder,
            Rejection::IllegalTransition {
                state: "paid".into(),
            },
            Rejection::SkuConflict,
            Rejection::RateLimited {
                retry_after_ms: 100,
            },
            Rejection::Unauthorized,
            Rejection::InvalidSignature("expired".into()),
            Rejection::PayloadTooLarge,
            Rejection::UnsupportedMediaType,
            Rejection::NotFound,
            Rejection::MethodNotAllowed { allow: "GET" },
            Rejection::Fenced,
            Rejection::Unavailable("down".into()),
            Rejection::NotReplicated("no replica confirmed".into()),
        ]
    }

    #[test]
    fn every_rejection_has_a_distinct_type_and_an_error_status() {
        let mut slugs: Vec<_> = all().iter().map(Rejection::slug).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), all().len());
        for r in all() {
            assert!((400..600).contains(&r.status()), "{r:?}");
        }
    }

    #[test]
    fn problem_json_shape() {
        let p = Rejection::Invalid(ValidationError::new(
            "quantity",
            "must be between 1 and 100",
        ))
        .problem();
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(json["type"], "urn:flashcart:problem:invalid-request");
        assert_eq!(json["title"], "Invalid request");
        assert_eq!(json["status"], 400);
        assert_eq!(json["field"], "quantity");
        assert_eq!(
            json["detail"],
            "invalid request: quantity: must be between 1 and 100"
        );
        assert_eq!(Rejection::SoldOut.problem().status, 409);
        let down = Rejection::Unavailable("redis Timeout at 10.0.0.7:6379: ERR fc_x".into());
        assert_eq!(down.problem().detail.as_deref(), Some(UNAVAILABLE_DETAIL));
        assert!(
            down.to_string().contains("10.0.0.7"),
            "the log keeps the cause"
        );
        // A deployment error is the same problem type, and names its cause.
        let wrong = Rejection::Unreachable("redis node 10.0.0.9:7000 is not a cluster node".into());
        assert_eq!(wrong.slug(), down.slug());
        assert_eq!(
            wrong.problem().detail.as_deref(),
            Some("redis node 10.0.0.9:7000 is not a cluster node")
        );
        let unconfirmed = Rejection::NotReplicated(
            "no replica of redis node 10.0.0.9:7000 confirmed the write within 100 ms".into(),
        );
        assert_eq!(unconfirmed.status(), 503);
        assert!(!unconfirmed.decided_nothing(), "the decision may be stored");
        assert!(
            unconfirmed
                .problem()
                .detail
                .is_some_and(|d| d.contains("10.0.0.9:7000") && d.contains("Idempotency-Key"))
        );
        assert_eq!(
            Rejection::RateLimited { retry_after_ms: 5 }
                .problem()
                .extensions["retry_after_ms"],
            5
        );
    }
}
