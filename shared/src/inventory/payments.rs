//! Payments: a payment provider's event applied to an order, bound to it by its event id.

use serde::Serialize;

use super::{Inventory, Now, Result};
use crate::exec::RedisExecutor;
use crate::functions::payments::Payment;
use crate::ids::{Currency, OrderId, PspEventId, RequestId};
use crate::problem::Rejection;

/// A payment provider's report that an order was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    /// The order.
    pub order: OrderId,
    /// The provider's event id (replays of it are no-ops).
    pub event_id: PspEventId,
    /// Amount paid, minor units.
    pub amount: u64,
    /// Currency paid.
    pub currency: Currency,
    /// The HTTP request that delivered it (`x-request-id`), named in the payment's event;
    /// not part of what makes two notices the same payment.
    pub request: Option<RequestId>,
}

impl PaymentNotice {
    /// What makes two notices with one event id the same payment.
    pub fn fingerprint(&self) -> String {
        let target = format!("{}\t{}\t{}", self.order, self.amount, self.currency);
        crate::fingerprint(&target, b"")
    }
}

/// What a payment did. Every outcome is recorded, so a replayed event answers the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// The order is paid.
    Paid,
    /// The order had been cancelled: a refund will be requested.
    PaidAfterCancel,
    /// Amount or currency differ from the order's: rejected, recorded.
    AmountMismatch,
    /// The order was already paid (or beyond): rejected, recorded.
    DuplicatePayment,
}

impl<E: RedisExecutor> Inventory<E> {
    /// Applies a payment provider's event. Every outcome but an unknown order is recorded
    /// under the event id, so a replay answers the same and changes nothing.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], or unavailable.
    pub async fn apply_payment(
        &self,
        notice: &PaymentNotice,
        now: Now,
    ) -> Result<(PaymentOutcome, bool)> {
        self.check_partition(notice.order.partition(), Rejection::UnknownOrder)?;
        // The event id is bound to this payment in its own partition first: the same id for
        // another order (in any partition) is refused, a replay passes.
        let at = self.schema.home_of_psp_event(&notice.event_id);
        let claim = self.schema.psp_claim(&notice.event_id);
        let fingerprint = notice.fingerprint();
        self.claim_key(at, &claim, &fingerprint, self.settings.psp_event_ttl_ms)
            .await?;
        let applied = self
            .call(&Payment {
                notice,
                now,
                psp_event_ttl_ms: self.settings.psp_event_ttl_ms,
            })
            .await;
        if let Err(e) = &applied
            && e.decided_nothing()
        {
            self.release_key(at, &claim, &fingerprint).await?;
        }
        applied
    }
}
