//! Orders: made from a reservation, read, cancelled (deadline or buyer), refunded; and the
//! idempotency claims that bind an order's (or a payment's) key in one partition.

use serde::Serialize;

use super::{Inventory, Now, Result};
use crate::exec::RedisExecutor;
use crate::functions::orders::{
    IdemClaim, IdemRelease, OrderCancel, OrderCreate, OrderGet, Refund,
};
use crate::ids::{BuyerId, IdempotencyKey, OrderId, RequestId, ReservationId};
use crate::keys::Partition;
use crate::order::{OrderEvent, OrderState};
use crate::problem::Rejection;

/// Turn a reservation into an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// The reservation.
    pub reservation: ReservationId,
    /// The buyer who holds it.
    pub buyer: BuyerId,
    /// The request's idempotency key.
    pub key: IdempotencyKey,
    /// A digest of the request body.
    pub fingerprint: String,
    /// The HTTP request making it (`x-request-id`), named in the order's event.
    pub request: Option<RequestId>,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// The state.
    pub state: OrderState,
    /// The SKU.
    #[cfg_attr(feature = "openapi", schemars(with = "crate::ids::SkuId"))]
    pub sku: String,
    /// Units.
    pub quantity: u64,
    /// Amount due, minor units.
    pub amount: u64,
    /// Currency.
    #[cfg_attr(feature = "openapi", schemars(with = "crate::ids::Currency"))]
    pub currency: String,
    /// Payment deadline, unix ms.
    pub payment_deadline: u64,
    /// The reservation it was made from.
    #[cfg_attr(feature = "openapi", schemars(with = "crate::ids::ReservationId"))]
    pub reservation: String,
    /// The buyer.
    #[cfg_attr(feature = "openapi", schemars(with = "crate::ids::BuyerId"))]
    pub buyer: String,
    /// Whether this answer replays an earlier decision.
    #[serde(skip)]
    pub replayed: bool,
}

/// Why an order is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The payment deadline passed (refused before then).
    Deadline,
    /// The buyer cancelled.
    Buyer,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; the units went back to their segment.
    Cancelled,
    /// The deadline has not passed.
    NotDue {
        /// The deadline.
        deadline: u64,
    },
}

impl<E: RedisExecutor> Inventory<E> {
    /// Turns an active reservation into an order awaiting payment. Replays with the same key
    /// answer the same order.
    ///
    /// # Errors
    /// Unknown reservation (or not the buyer's), reservation gone (expired or released),
    /// already ordered, idempotency mismatch, unavailable.
    pub async fn create_order(&self, req: &OrderRequest, now: Now) -> Result<Order> {
        let p = self.check_partition(req.reservation.partition(), Rejection::UnknownReservation)?;
        // The key is bound in the buyer's home partition; when the reservation lives there
        // too, the order's own record is that binding (one call).
        let home = self.schema.home_of_buyer(&req.buyer);
        let claim = (home != p).then(|| (home, self.schema.order_claim(&req.buyer, &req.key)));
        if let Some((home, claim)) = &claim {
            self.claim_key(
                *home,
                claim,
                &req.fingerprint,
                self.settings.idempotency_ttl_ms,
            )
            .await?;
        }
        let order = req.reservation.order_id();
        let created = self
            .call(&OrderCreate {
                req,
                order: &order,
                now,
                idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
            })
            .await;
        if let (Some((home, claim)), Err(e)) = (&claim, &created)
            && e.decided_nothing()
        {
            self.release_key(*home, claim, &req.fingerprint).await?;
        }
        created
    }

    /// Binds an idempotency key to the request that first used it ([`KeySchema::order_claim`],
    /// [`KeySchema::psp_claim`]): a replay passes, another request with the key is refused.
    pub(super) async fn claim_key(
        &self,
        partition: Partition,
        key: &str,
        fingerprint: &str,
        ttl_ms: u64,
    ) -> Result<()> {
        self.call(&IdemClaim {
            partition,
            key,
            fingerprint,
            ttl_ms,
        })
        .await
    }

    /// Gives back a claim whose request was refused before anything was decided.
    pub(super) async fn release_key(
        &self,
        partition: Partition,
        key: &str,
        fingerprint: &str,
    ) -> Result<()> {
        self.call(&IdemRelease {
            partition,
            key,
            fingerprint,
        })
        .await
    }

    /// An order's current record.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], or unavailable.
    pub async fn order(&self, id: &OrderId) -> Result<Order> {
        self.check_partition(id.partition(), Rejection::UnknownOrder)?;
        self.call(&OrderGet { id }).await
    }

    /// Cancels an unpaid order and gives its units back.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], [`Rejection::IllegalTransition`] when it is not awaiting
    /// payment, or unavailable.
    pub async fn cancel_order(
        &self,
        id: &OrderId,
        reason: CancelReason,
        now: Now,
    ) -> Result<CancelOutcome> {
        self.cancel_order_for(id, reason, now, None).await
    }

    /// [`Inventory::cancel_order`] on behalf of HTTP request `request`, which the
    /// cancellation's event names.
    ///
    /// # Errors
    /// As [`Inventory::cancel_order`].
    pub async fn cancel_order_for(
        &self,
        id: &OrderId,
        reason: CancelReason,
        now: Now,
        request: Option<&RequestId>,
    ) -> Result<CancelOutcome> {
        self.check_partition(id.partition(), Rejection::UnknownOrder)?;
        self.call(&OrderCancel {
            id,
            reason,
            now,
            request,
        })
        .await
    }

    /// Requests a refund of a paid (or paid-after-cancel) order.
    ///
    /// # Errors
    /// Unknown order, illegal transition, unavailable.
    pub async fn request_refund(&self, id: &OrderId, now: Now) -> Result<OrderState> {
        self.refund_step(id, OrderEvent::RefundRequest, now).await
    }

    /// Records that a refund completed.
    ///
    /// # Errors
    /// Unknown order, illegal transition, unavailable.
    pub async fn complete_refund(&self, id: &OrderId, now: Now) -> Result<OrderState> {
        self.refund_step(id, OrderEvent::RefundComplete, now).await
    }

    async fn refund_step(&self, id: &OrderId, event: OrderEvent, now: Now) -> Result<OrderState> {
        self.check_partition(id.partition(), Rejection::UnknownOrder)?;
        self.call(&Refund { id, event, now }).await
    }
}
