//! Payments: `fc_payment`, which applies a payment provider's event to an order and records
//! its outcome under the event id.

use super::{Access, Function, Reply, Result, Spec, request_arg};
use crate::inventory::{Now, PaymentNotice, PaymentOutcome};
use crate::keys::KeySchema;
use crate::problem::Rejection;

/// `fc_payment`: applies a payment provider's event to an order.
pub const PAYMENT: Spec = Spec {
    name: "fc_payment",
    access: Access::Write,
    keys: &["sku", "order", "psp_event", "events", "deadlines", "guard"],
    args: &[
        "oid", "event_id", "amount", "currency", "now", "psp_ttl", "request",
    ],
};

/// Each outcome's code, as `fc_payment` answers it and `fc_restore_payment` records it.
const OUTCOMES: [(PaymentOutcome, &str); 4] = [
    (PaymentOutcome::Paid, "paid"),
    (PaymentOutcome::PaidAfterCancel, "paid_after_cancel"),
    (PaymentOutcome::AmountMismatch, "amount_mismatch"),
    (PaymentOutcome::DuplicatePayment, "duplicate_payment"),
];

/// The library's code for `outcome`.
pub(crate) fn outcome_code(outcome: &PaymentOutcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| o == outcome)
        .map_or("", |(_, code)| code)
}

/// A call of `fc_payment`.
pub(crate) struct Payment<'a> {
    pub(crate) notice: &'a PaymentNotice,
    pub(crate) now: Now,
    pub(crate) psp_event_ttl_ms: u64,
}

impl Function<6, 7> for Payment<'_> {
    const SPEC: Spec = PAYMENT;
    /// The outcome, and whether it replays an earlier one.
    type Output = (PaymentOutcome, bool);

    fn keys(&self, schema: &KeySchema) -> [String; 6] {
        let id = &self.notice.order;
        let p = id.partition();
        [
            schema.sku(p, id.sku()),
            schema.order(id),
            schema.psp_event(p, &self.notice.event_id),
            schema.events(p),
            schema.deadlines(p),
            schema.guard(p),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 7] {
        let notice = self.notice;
        [
            notice.order.to_string(),
            notice.event_id.to_string(),
            notice.amount.to_string(),
            notice.currency.to_string(),
            self.now.arg(),
            self.psp_event_ttl_ms.to_string(),
            request_arg(notice.request.as_ref()),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        if reply.code == "unknown_order" {
            return Err(Rejection::UnknownOrder);
        }
        let outcome = OUTCOMES
            .iter()
            .find(|(_, code)| *code == reply.code)
            .map(|(outcome, _)| outcome.clone())
            .ok_or_else(|| reply.unexpected())?;
        Ok((outcome, reply.replayed))
    }
}
