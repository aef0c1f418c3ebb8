//! The pure part of an apply: a batch's events folded over the rows they touch, in memory,
//! checking every rule as it goes. No I/O: `store` reads the rows before and writes the
//! result after.
//!
//! Order transitions are the core's state machine ([`OrderState::next`]): an event that
//! records a move (`order.paid`, …) applies only where `next` leads from the order's state to
//! the state the event names. A reservation ends (released, or made into an order) only while
//! it is live.

use std::collections::HashMap;

use flashcart_core::event::{Body, RejectReason, cancel_reason_name};
use flashcart_core::inventory::PaymentOutcome;
use flashcart_core::order::OrderState;
use flashcart_core::recovery::ReservationState;

use super::rows::{
    OrderRow, RefundRow, ReservationRow, payment_outcome_name, reservation_state_name,
};
use super::{Applicable, EventFailure};

/// A row as the fold holds it.
#[derive(Debug, Clone)]
pub(super) struct Tracked<T> {
    pub(super) row: T,
    /// Read from the database (else created by this batch): upserted, not inserted.
    pub(super) existed: bool,
    /// Changed by this batch: to be written.
    pub(super) dirty: bool,
}

impl<T> Tracked<T> {
    /// A row read from the database.
    pub(super) fn read(row: T) -> Self {
        Self {
            row,
            existed: true,
            dirty: false,
        }
    }

    fn created(row: T) -> Self {
        Self {
            row,
            existed: false,
            dirty: true,
        }
    }
}

/// The record rows a batch touches, by id, as read and then as folded.
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    pub(super) reservations: HashMap<String, Tracked<ReservationRow>>,
    pub(super) orders: HashMap<String, Tracked<OrderRow>>,
    pub(super) refunds: HashMap<String, Tracked<RefundRow>>,
}

/// A row of `order_events`: one per order transition, keyed by the event that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OrderEventRow {
    pub(super) event: usize,
    pub(super) ord: String,
    pub(super) from: Option<OrderState>,
    pub(super) to: OrderState,
    pub(super) detail: String,
}

/// A row of `payments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewPayment {
    pub(super) psp_event: String,
    pub(super) ord: String,
    pub(super) amount: i64,
    pub(super) currency: String,
    /// A [`payment_outcome_name`].
    pub(super) outcome: &'static str,
    pub(super) at: i64,
}

/// What a batch changes: the folded rows, and what it appends.
#[derive(Debug, Clone, Default)]
pub(super) struct Folded {
    pub(super) rows: Rows,
    pub(super) order_events: Vec<OrderEventRow>,
    pub(super) payments: Vec<NewPayment>,
    /// Indices of the `sku.loaded` events, in order (written one by one: rare, and every
    /// partition's copy of the same SKU meets the others in one table row).
    pub(super) sku_loads: Vec<usize>,
}

/// Folds the events at `fresh` (indices into `events`) over `rows`; the first event that
/// breaks a rule is returned with its index, and nothing of the batch is to be written.
pub(super) fn fold(
    rows: Rows,
    events: &[Applicable],
    fresh: &[usize],
) -> Result<Folded, (usize, EventFailure)> {
    let mut folded = Folded {
        rows,
        ..Folded::default()
    };
    for &index in fresh {
        folded
            .event(index, &events[index])
            .map_err(|failure| (index, failure))?;
    }
    Ok(folded)
}

type Step = Result<(), EventFailure>;

impl Folded {
    fn event(&mut self, index: usize, e: &Applicable) -> Step {
        let at = e.event.at;
        match &e.event.body {
            Body::SkuLoaded { .. } => self.sku_loads.push(index),
            Body::ReservationCreated { .. } => self.create_reservation(e)?,
            Body::ReservationReleased { .. } => self.end_reservation(e)?,
            Body::OrderCreated { .. } => self.create_order(index, e)?,
            Body::OrderPaid {
                ord,
                qty,
                psp_event,
                amount,
                currency,
                ..
            } => {
                self.move_order(index, e, Some(*qty), psp_event)?;
                self.pay(at, psp_event, ord, *amount, currency, &PaymentOutcome::Paid);
            }
            Body::OrderCancelled { reason, .. } => {
                self.move_order(index, e, None, cancel_reason_name(*reason))?
            }
            Body::OrderPaidAfterCancel {
                ord,
                psp_event,
                amount,
                currency,
                ..
            } => {
                self.move_order(index, e, None, psp_event)?;
                let outcome = PaymentOutcome::PaidAfterCancel;
                self.pay(at, psp_event, ord, *amount, currency, &outcome);
                self.owe_refund(at, ord, psp_event, *amount, currency)?;
            }
            Body::OrderRefundRequested { ord } => {
                self.move_order(index, e, None, "")?;
                self.set_refund(at, ord, "requested");
            }
            Body::OrderRefunded { ord } => {
                self.move_order(index, e, None, "")?;
                self.set_refund(at, ord, "refunded");
            }
            Body::PaymentRejected {
                ord,
                psp_event,
                reason,
                amount,
                currency,
            } => {
                let outcome = match reason {
                    RejectReason::AmountMismatch => PaymentOutcome::AmountMismatch,
                    RejectReason::DuplicatePayment => PaymentOutcome::DuplicatePayment,
                };
                self.pay(at, psp_event, ord, *amount, currency, &outcome);
            }
        }
        Ok(())
    }

    fn create_reservation(&mut self, e: &Applicable) -> Step {
        let Body::ReservationCreated {
            rsv,
            seg,
            qty,
            buyer,
            expires,
        } = &e.event.body
        else {
            return Ok(());
        };
        if self.rows.reservations.contains_key(rsv) {
            return Err(EventFailure::Duplicate {
                what: "reservation",
                id: rsv.clone(),
            });
        }
        let row = ReservationRow {
            rsv: rsv.clone(),
            sku: e.event.sku.clone(),
            segment: *seg,
            qty: *qty,
            buyer: buyer.clone(),
            expires_at: *expires,
            state: reservation_state_name(ReservationState::Active).to_owned(),
            created_at: e.event.at,
            closed_at: None,
        };
        self.rows
            .reservations
            .insert(rsv.clone(), Tracked::created(row));
        Ok(())
    }

    /// Ends the live reservation the event names (released, or made into an order).
    fn end_reservation(&mut self, e: &Applicable) -> Step {
        let Some((rsv, to)) = e.event.body.reservation_end() else {
            return Ok(());
        };
        let Some(r) = self.rows.reservations.get_mut(rsv) else {
            return Err(EventFailure::Missing {
                what: "reservation",
                id: rsv.to_owned(),
            });
        };
        if r.row.state != reservation_state_name(ReservationState::Active) {
            return Err(EventFailure::IllegalTransition {
                event: e.event.body.kind().as_str(),
                what: "reservation",
                id: rsv.to_owned(),
                state: r.row.state.clone(),
            });
        }
        r.row.state = reservation_state_name(to).to_owned();
        r.row.closed_at = Some(e.event.at);
        r.dirty = true;
        Ok(())
    }

    fn create_order(&mut self, index: usize, e: &Applicable) -> Step {
        let Body::OrderCreated {
            ord,
            rsv,
            seg,
            qty,
            buyer,
            amount,
            currency,
            deadline,
        } = &e.event.body
        else {
            return Ok(());
        };
        if self.rows.orders.contains_key(ord) {
            return Err(EventFailure::Duplicate {
                what: "order",
                id: ord.clone(),
            });
        }
        self.end_reservation(e)?;
        let start = OrderState::PendingPayment;
        let row = OrderRow {
            ord: ord.clone(),
            rsv: rsv.clone(),
            sku: e.event.sku.clone(),
            segment: *seg,
            qty: *qty,
            buyer: buyer.clone(),
            amount: *amount,
            currency: currency.clone(),
            deadline_at: *deadline,
            state: start.as_str().to_owned(),
            sold_qty: 0,
            created_at: e.event.at,
            updated_at: e.event.at,
        };
        self.rows.orders.insert(ord.clone(), Tracked::created(row));
        self.log_order(index, ord, None, start, "");
        Ok(())
    }

    /// Moves the order the event names as the state machine allows; `sold` sets its sold
    /// units (a payment in time).
    fn move_order(
        &mut self,
        index: usize,
        e: &Applicable,
        sold: Option<i64>,
        detail: &str,
    ) -> Step {
        let Some(change) = e.event.body.order_change() else {
            return Ok(());
        };
        let Some(o) = self.rows.orders.get_mut(change.ord) else {
            return Err(EventFailure::Missing {
                what: "order",
                id: change.ord.to_owned(),
            });
        };
        let from = OrderState::parse(&o.row.state)
            .filter(|from| from.next(change.event) == Some(change.to))
            .ok_or_else(|| EventFailure::IllegalTransition {
                event: e.event.body.kind().as_str(),
                what: "order",
                id: change.ord.to_owned(),
                state: o.row.state.clone(),
            })?;
        o.row.state = change.to.as_str().to_owned();
        if let Some(sold) = sold {
            o.row.sold_qty = sold;
        }
        o.row.updated_at = e.event.at;
        o.dirty = true;
        self.log_order(index, change.ord, Some(from), change.to, detail);
        Ok(())
    }

    fn log_order(
        &mut self,
        event: usize,
        ord: &str,
        from: Option<OrderState>,
        to: OrderState,
        detail: &str,
    ) {
        self.order_events.push(OrderEventRow {
            event,
            ord: ord.to_owned(),
            from,
            to,
            detail: detail.to_owned(),
        });
    }

    fn pay(
        &mut self,
        at: i64,
        psp: &str,
        ord: &str,
        amount: i64,
        currency: &str,
        outcome: &PaymentOutcome,
    ) {
        self.payments.push(NewPayment {
            psp_event: psp.to_owned(),
            ord: ord.to_owned(),
            amount,
            currency: currency.to_owned(),
            outcome: payment_outcome_name(outcome),
            at,
        });
    }

    /// The refund a late payment makes settlement owe (asked of the core after commit).
    fn owe_refund(&mut self, at: i64, ord: &str, psp: &str, amount: i64, currency: &str) -> Step {
        if self.rows.refunds.contains_key(ord) {
            return Err(EventFailure::Duplicate {
                what: "refund",
                id: ord.to_owned(),
            });
        }
        let row = RefundRow {
            ord: ord.to_owned(),
            psp_event: Some(psp.to_owned()),
            amount: Some(amount),
            currency: Some(currency.to_owned()),
            state: "to_request".to_owned(),
            created_at: at,
            updated_at: at,
        };
        self.rows
            .refunds
            .insert(ord.to_owned(), Tracked::created(row));
        Ok(())
    }

    /// Moves an order's refund on (creating it when the refund was not owed by a late payment).
    fn set_refund(&mut self, at: i64, ord: &str, state: &str) {
        let refund = self.rows.refunds.entry(ord.to_owned()).or_insert_with(|| {
            Tracked::created(RefundRow {
                ord: ord.to_owned(),
                psp_event: None,
                amount: None,
                currency: None,
                state: state.to_owned(),
                created_at: at,
                updated_at: at,
            })
        });
        refund.row.state = state.to_owned();
        refund.row.updated_at = at;
        refund.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use flashcart_core::event::Event;
    use flashcart_core::keys::Partition;

    use super::*;

    fn ev(seq: u64, pairs: &[(&str, &str)]) -> Applicable {
        Applicable {
            partition: Partition::new(0),
            identity: crate::entry::EntryId { ms: 1, seq },
            event: Event::parse(pairs.iter().copied()).unwrap(),
        }
    }

    fn order(seq: u64, kind: &str, extra: &[(&str, &str)]) -> Applicable {
        let mut pairs = vec![
            ("type", kind),
            ("at", "7"),
            ("sku", "s"),
            ("ord", "o1"),
            ("seg", "0"),
            ("qty", "1"),
            ("psp_event", "ev"),
            ("amount", "5"),
            ("currency", "EUR"),
        ];
        pairs.extend_from_slice(extra);
        ev(seq, &pairs)
    }

    /// The whole life of an order in one batch, in memory; a move the state machine does not
    /// allow names its event.
    #[test]
    fn order_moves_follow_the_core_state_machine() {
        let events = vec![
            ev(
                0,
                &[
                    ("type", "reservation.created"),
                    ("at", "1"),
                    ("sku", "s"),
                    ("rsv", "r1"),
                    ("seg", "0"),
                    ("qty", "1"),
                    ("buyer", "b"),
                    ("expires", "9"),
                ],
            ),
            order(
                1,
                "order.created",
                &[("rsv", "r1"), ("buyer", "b"), ("deadline", "9")],
            ),
            order(2, "order.cancelled", &[("reason", "deadline")]),
            order(3, "order.paid_after_cancel", &[]),
            order(4, "order.refund_requested", &[]),
            order(5, "order.refunded", &[]),
            order(6, "order.cancelled", &[("reason", "buyer")]),
        ];
        let all: Vec<usize> = (0..events.len()).collect();
        let folded = fold(Rows::default(), &events, &all[..6]).unwrap();
        let o = &folded.rows.orders["o1"].row;
        assert_eq!(o.state, OrderState::Refunded.as_str());
        assert_eq!(folded.rows.reservations["r1"].row.state, "ordered");
        assert_eq!(folded.rows.refunds["o1"].row.state, "refunded");
        assert_eq!(folded.order_events.len(), 5);
        assert_eq!(folded.payments.len(), 1);
        match fold(Rows::default(), &events, &all) {
            Err((6, EventFailure::IllegalTransition { state, .. })) => {
                assert_eq!(state, "refunded")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
