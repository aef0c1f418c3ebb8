//! The rows of the ledger's record tables, each with its one column list and decoder: read by
//! the apply (the rows a batch touches) and by a restore (every row, see `image`).

use flashcart_core::inventory::PaymentOutcome;
use flashcart_core::recovery::ReservationState;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Arg, int, text};

/// A table of records the apply reads and writes, in one place: its columns, decoded from a
/// row and bound for a write in the same order.
pub(super) trait Record: Sized {
    /// The table.
    const TABLE: &'static str;
    /// Its key column (the first of [`Self::COLUMNS`]).
    const KEY: &'static str;
    /// The columns, in the order of [`Self::from_row`] and [`Self::args`].
    const COLUMNS: &'static str;
    /// What writing a row read before changes (`SET …` of its upsert).
    const UPDATE: &'static str;

    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error>;

    /// The values of [`Self::COLUMNS`], to bind.
    fn args(&self) -> Vec<Arg>;
}

/// The ledger's name of a reservation state: the core's name, except `held` for `active`
/// (the ledger's word since its first migration; its rows and queries say `held`).
pub fn reservation_state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Active => HELD,
        other => other.as_str(),
    }
}

/// Reads a state name of the `reservations` table.
pub fn parse_reservation_state(name: &str) -> Option<ReservationState> {
    if name == HELD {
        return Some(ReservationState::Active);
    }
    ReservationState::parse(name).filter(|s| *s != ReservationState::Active)
}

/// The ledger's name of a live reservation.
const HELD: &str = "held";

/// The ledger's name of a payment's outcome (`payments.outcome`): `captured`, `after_cancel`,
/// `rejected_amount_mismatch`, `rejected_duplicate_payment`.
pub fn payment_outcome_name(outcome: &PaymentOutcome) -> &'static str {
    match outcome {
        PaymentOutcome::Paid => "captured",
        PaymentOutcome::PaidAfterCancel => "after_cancel",
        PaymentOutcome::AmountMismatch => "rejected_amount_mismatch",
        PaymentOutcome::DuplicatePayment => "rejected_duplicate_payment",
    }
}

/// Reads a name of `payments.outcome`.
pub fn parse_payment_outcome(name: &str) -> Option<PaymentOutcome> {
    [
        PaymentOutcome::Paid,
        PaymentOutcome::PaidAfterCancel,
        PaymentOutcome::AmountMismatch,
        PaymentOutcome::DuplicatePayment,
    ]
    .into_iter()
    .find(|o| payment_outcome_name(o) == name)
}

/// A reservation row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `reservations`, named as there")]
pub struct ReservationRow {
    pub rsv: String,
    pub sku: String,
    pub segment: i64,
    pub qty: i64,
    pub buyer: String,
    pub expires_at: i64,
    /// `held`, `ordered`, `expired` or `cancelled` ([`reservation_state_name`]).
    pub state: String,
    pub created_at: i64,
    pub closed_at: Option<i64>,
}

impl Record for ReservationRow {
    const TABLE: &str = "reservations";
    const KEY: &str = "rsv";
    const UPDATE: &str = "state = excluded.state, closed_at = excluded.closed_at";
    const COLUMNS: &str = "rsv, sku, segment, qty, buyer, expires_at, state, created_at, closed_at";

    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            rsv: r.try_get(0)?,
            sku: r.try_get(1)?,
            segment: r.try_get(2)?,
            qty: r.try_get(3)?,
            buyer: r.try_get(4)?,
            expires_at: r.try_get(5)?,
            state: r.try_get(6)?,
            created_at: r.try_get(7)?,
            closed_at: r.try_get(8)?,
        })
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            text(&self.rsv),
            text(&self.sku),
            int(self.segment),
            int(self.qty),
            text(&self.buyer),
            int(self.expires_at),
            text(&self.state),
            int(self.created_at),
            Arg::OptInt(self.closed_at),
        ]
    }
}

/// An order row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `orders`, named as there")]
pub struct OrderRow {
    pub ord: String,
    pub rsv: String,
    pub sku: String,
    pub segment: i64,
    pub qty: i64,
    pub buyer: String,
    pub amount: i64,
    pub currency: String,
    pub deadline_at: i64,
    /// An [`flashcart_core::order::OrderState`] name.
    pub state: String,
    /// Units sold: set when paid in time.
    pub sold_qty: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Record for OrderRow {
    const TABLE: &str = "orders";
    const KEY: &str = "ord";
    const UPDATE: &str =
        "state = excluded.state, sold_qty = excluded.sold_qty, updated_at = excluded.updated_at";
    const COLUMNS: &str = "ord, rsv, sku, segment, qty, buyer, amount, currency, \
                                      deadline_at, state, sold_qty, created_at, updated_at";

    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            ord: r.try_get(0)?,
            rsv: r.try_get(1)?,
            sku: r.try_get(2)?,
            segment: r.try_get(3)?,
            qty: r.try_get(4)?,
            buyer: r.try_get(5)?,
            amount: r.try_get(6)?,
            currency: r.try_get(7)?,
            deadline_at: r.try_get(8)?,
            state: r.try_get(9)?,
            sold_qty: r.try_get(10)?,
            created_at: r.try_get(11)?,
            updated_at: r.try_get(12)?,
        })
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            text(&self.ord),
            text(&self.rsv),
            text(&self.sku),
            int(self.segment),
            int(self.qty),
            text(&self.buyer),
            int(self.amount),
            text(&self.currency),
            int(self.deadline_at),
            text(&self.state),
            int(self.sold_qty),
            int(self.created_at),
            int(self.updated_at),
        ]
    }
}

/// A refund row: `to_request` (owed after a late payment) → `requested` → `refunded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RefundRow {
    pub(super) ord: String,
    pub(super) psp_event: Option<String>,
    pub(super) amount: Option<i64>,
    pub(super) currency: Option<String>,
    pub(super) state: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl Record for RefundRow {
    const TABLE: &str = "refunds";
    const KEY: &str = "ord";
    const UPDATE: &str = "state = excluded.state, updated_at = excluded.updated_at";
    const COLUMNS: &str = "ord, psp_event, amount, currency, state, created_at, updated_at";

    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            ord: r.try_get(0)?,
            psp_event: r.try_get(1)?,
            amount: r.try_get(2)?,
            currency: r.try_get(3)?,
            state: r.try_get(4)?,
            created_at: r.try_get(5)?,
            updated_at: r.try_get(6)?,
        })
    }

    fn args(&self) -> Vec<Arg> {
        vec![
            text(&self.ord),
            Arg::OptText(self.psp_event.clone()),
            Arg::OptInt(self.amount),
            Arg::OptText(self.currency.clone()),
            text(&self.state),
            int(self.created_at),
            int(self.updated_at),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_state_names_round_trip() {
        for s in ReservationState::ALL {
            assert_eq!(parse_reservation_state(reservation_state_name(s)), Some(s));
        }
        assert_eq!(
            parse_reservation_state("active"),
            None,
            "the ledger says held"
        );
        for name in ["captured", "after_cancel", "rejected_duplicate_payment"] {
            let outcome = parse_payment_outcome(name).unwrap();
            assert_eq!(payment_outcome_name(&outcome), name);
        }
    }
}
