//! Compensation timers: reservations past their expiry are released and orders past their
//! payment deadline cancelled, through the same Redis functions the edge uses (so the stock
//! goes back and the event is emitted in one atomic call); orders paid after cancellation get
//! their refund requested.
//!
//! Safe with several settlement processes: each function re-checks, inside its atomic call,
//! that the reservation is still active and due (or the order still unpaid and overdue), so
//! when two processes fire the same timer one releases and the other is told `not_active`.

use std::sync::Arc;

use flashcart_core::ids::OrderId;
use flashcart_core::inventory::{CancelOutcome, CancelReason, ReleaseOutcome, ReleaseReason};
use flashcart_core::{Inventory, Now, RedisExecutor, Rejection};

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// What one [`Timers::fire`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// Reservations released as expired.
    pub expired: usize,
    /// Orders cancelled at their deadline.
    pub cancelled: usize,
    /// Refunds requested for orders paid after cancellation.
    pub refunds: usize,
}

/// The timers of one settlement process.
pub struct Timers<E> {
    inventory: Inventory<E>,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    /// Most ids handled per partition and kind in one [`Timers::fire`].
    limit: usize,
}

fn unavailable(r: Rejection) -> Error {
    Error::Inventory(r)
}

impl<E: RedisExecutor> Timers<E> {
    /// Timers over `inventory`, requesting refunds the `ledger` records.
    pub fn new(
        inventory: Inventory<E>,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        limit: usize,
    ) -> Self {
        Self {
            inventory,
            ledger,
            metrics,
            limit: limit.max(1),
        }
    }

    /// Fires every timer due at `now`.
    ///
    /// # Errors
    /// When Redis or the ledger fails; what fired before that stays done.
    pub async fn fire(&self, now: Now) -> Result<Fired> {
        let mut fired = Fired::default();
        for p in self.inventory.schema().partitions() {
            for id in self
                .inventory
                .due_reservations(p, now, self.limit)
                .await
                .map_err(unavailable)?
            {
                match self
                    .inventory
                    .release(&id, ReleaseReason::Expired, now)
                    .await
                {
                    Ok(ReleaseOutcome::Released { .. }) => fired.expired += 1,
                    // Another process released it, or it became an order just now.
                    Ok(ReleaseOutcome::NotDue { .. } | ReleaseOutcome::NotActive { .. })
                    | Err(Rejection::UnknownReservation) => {}
                    // Redis restarted and recovery has not checked the partition yet: its
                    // timers wait for that (the restore rewrites them anyway).
                    Err(Rejection::Fenced) => break,
                    Err(other) => return Err(unavailable(other)),
                }
            }
            for id in self
                .inventory
                .due_orders(p, now, self.limit)
                .await
                .map_err(unavailable)?
            {
                match self
                    .inventory
                    .cancel_order(&id, CancelReason::Deadline, now)
                    .await
                {
                    Ok(CancelOutcome::Cancelled) => fired.cancelled += 1,
                    // Paid (or cancelled by another process) meanwhile.
                    Ok(CancelOutcome::NotDue { .. })
                    | Err(Rejection::IllegalTransition { .. } | Rejection::UnknownOrder) => {}
                    Err(Rejection::Fenced) => break,
                    Err(other) => return Err(unavailable(other)),
                }
            }
        }
        for ord in self
            .ledger
            .refunds_to_request(i64::try_from(self.limit).unwrap_or(i64::MAX))
            .await?
        {
            let Ok(id) = OrderId::parse(&ord) else {
                tracing::error!(order = %ord, "ledger holds an order id the core cannot parse");
                continue;
            };
            match self.inventory.request_refund(&id, now).await {
                Ok(_) => fired.refunds += 1,
                // Requested already (its event is on the way to the ledger).
                // Fenced: asked again by a later pass.
                Err(Rejection::IllegalTransition { .. } | Rejection::Fenced) => {}
                Err(other) => return Err(unavailable(other)),
            }
        }
        self.metrics
            .timers_fired(fired.expired, fired.cancelled, fired.refunds);
        Ok(fired)
    }
}
