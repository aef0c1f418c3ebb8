//! The order state machine, as a pure function.
//!
//! ```text
//! pending_payment ──payment──► paid ──refund_request──► refund_pending ──refund_complete──► refunded
//!        │
//!        └──cancel──► cancelled ──payment──► paid_after_cancel ──refund_request──► refund_pending
//! ```
//!
//! The Redis function library applies the same table: [`lua_transition_table`] renders it
//! into the Lua source, so the two can never disagree.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Created from a reservation; waiting for the payment until the deadline.
    PendingPayment,
    /// Paid in time: the units are sold.
    Paid,
    /// Cancelled (deadline passed or buyer cancelled): the units went back to stock.
    Cancelled,
    /// A payment arrived after cancellation: the money must go back.
    PaidAfterCancel,
    /// A refund was requested and is under way.
    RefundPending,
    /// The refund completed.
    Refunded,
}

/// Something that happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderEvent {
    /// The payment provider reports a successful payment.
    Payment,
    /// The payment deadline passed, or the buyer cancelled.
    Cancel,
    /// A refund is requested (by an operator, or by settlement for a late payment).
    RefundRequest,
    /// The payment provider reports the refund done.
    RefundComplete,
}

impl OrderState {
    /// Every state, for exhaustive tests and the Lua table.
    pub const ALL: [OrderState; 6] = [
        OrderState::PendingPayment,
        OrderState::Paid,
        OrderState::Cancelled,
        OrderState::PaidAfterCancel,
        OrderState::RefundPending,
        OrderState::Refunded,
    ];

    /// The wire name, as stored in Redis and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::PendingPayment => "pending_payment",
            OrderState::Paid => "paid",
            OrderState::Cancelled => "cancelled",
            OrderState::PaidAfterCancel => "paid_after_cancel",
            OrderState::RefundPending => "refund_pending",
            OrderState::Refunded => "refunded",
        }
    }

    /// Parses a wire name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// The state after `event`, or `None` when the transition is illegal (rejected and
    /// recorded, never applied).
    pub fn next(self, event: OrderEvent) -> Option<OrderState> {
        use OrderEvent as E;
        use OrderState as S;
        match (self, event) {
            (S::PendingPayment, E::Payment) => Some(S::Paid),
            (S::PendingPayment, E::Cancel) => Some(S::Cancelled),
            (S::Cancelled, E::Payment) => Some(S::PaidAfterCancel),
            (S::Paid | S::PaidAfterCancel, E::RefundRequest) => Some(S::RefundPending),
            (S::RefundPending, E::RefundComplete) => Some(S::Refunded),
            (S::PendingPayment, E::RefundRequest | E::RefundComplete)
            | (S::Paid, E::Payment | E::Cancel | E::RefundComplete)
            | (S::Cancelled, E::Cancel | E::RefundRequest | E::RefundComplete)
            | (S::PaidAfterCancel, E::Payment | E::Cancel | E::RefundComplete)
            | (S::RefundPending, E::Payment | E::Cancel | E::RefundRequest)
            | (S::Refunded, _) => None,
        }
    }

    /// Whether the order still holds stock that is neither sold nor returned.
    pub fn holds_stock(self) -> bool {
        self == OrderState::PendingPayment
    }
}

impl OrderEvent {
    /// Every event.
    pub const ALL: [OrderEvent; 4] = [
        OrderEvent::Payment,
        OrderEvent::Cancel,
        OrderEvent::RefundRequest,
        OrderEvent::RefundComplete,
    ];

    /// The wire name used by the Lua library.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEvent::Payment => "payment",
            OrderEvent::Cancel => "cancel",
            OrderEvent::RefundRequest => "refund_request",
            OrderEvent::RefundComplete => "refund_complete",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transition table as a Lua table constructor: `{ pending_payment = { payment = 'paid', … }, … }`.
pub fn lua_transition_table() -> String {
    let mut out = String::from("{\n");
    for state in OrderState::ALL {
        out.push_str(&format!("  {} = {{", state.as_str()));
        for event in OrderEvent::ALL {
            if let Some(next) = state.next(event) {
                out.push_str(&format!(" {} = '{}',", event.as_str(), next.as_str()));
            }
        }
        out.push_str(" },\n");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, written out independently of `next`: every (state, event) pair.
    #[test]
    fn every_transition_is_as_specified() {
        use OrderEvent as E;
        use OrderState as S;
        let expected = [
            (S::PendingPayment, E::Payment, Some(S::Paid)),
            (S::PendingPayment, E::Cancel, Some(S::Cancelled)),
            (S::PendingPayment, E::RefundRequest, None),
            (S::PendingPayment, E::RefundComplete, None),
            (S::Paid, E::Payment, None),
            (S::Paid, E::Cancel, None),
            (S::Paid, E::RefundRequest, Some(S::RefundPending)),
            (S::Paid, E::RefundComplete, None),
            (S::Cancelled, E::Payment, Some(S::PaidAfterCancel)),
            (S::Cancelled, E::Cancel, None),
            (S::Cancelled, E::RefundRequest, None),
            (S::Cancelled, E::RefundComplete, None),
            (S::PaidAfterCancel, E::Payment, None),
            (S::PaidAfterCancel, E::Cancel, None),
            (S::PaidAfterCancel, E::RefundRequest, Some(S::RefundPending)),
            (S::PaidAfterCancel, E::RefundComplete, None),
            (S::RefundPending, E::Payment, None),
            (S::RefundPending, E::Cancel, None),
            (S::RefundPending, E::RefundRequest, None),
            (S::RefundPending, E::RefundComplete, Some(S::Refunded)),
            (S::Refunded, E::Payment, None),
            (S::Refunded, E::Cancel, None),
            (S::Refunded, E::RefundRequest, None),
            (S::Refunded, E::RefundComplete, None),
        ];
        assert_eq!(
            expected.len(),
            OrderState::ALL.len() * OrderEvent::ALL.len()
        );
        for (state, event, next) in expected {
            assert_eq!(state.next(event), next, "{state} + {event:?}");
        }
    }

    #[test]
    fn refunded_is_terminal_and_everything_is_reachable() {
        let mut reached = vec![OrderState::PendingPayment];
        let mut frontier = reached.clone();
        while let Some(s) = frontier.pop() {
            for e in OrderEvent::ALL {
                if let Some(n) = s.next(e)
                    && !reached.contains(&n)
                {
                    reached.push(n);
                    frontier.push(n);
                }
            }
        }
        assert_eq!(reached.len(), OrderState::ALL.len());
        assert!(
            OrderEvent::ALL
                .iter()
                .all(|e| OrderState::Refunded.next(*e).is_none())
        );
    }

    #[test]
    fn names_round_trip() {
        for s in OrderState::ALL {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderState::parse("shipped"), None);
    }

    #[test]
    fn lua_table_lists_exactly_the_legal_transitions() {
        let table = lua_transition_table();
        let legal = OrderState::ALL
            .iter()
            .flat_map(|s| {
                OrderEvent::ALL
                    .iter()
                    .filter(move |e| s.next(**e).is_some())
            })
            .count();
        assert_eq!(table.matches(" = '").count(), legal);
        assert!(table.contains("pending_payment = { payment = 'paid', cancel = 'cancelled', }"));
    }
}
