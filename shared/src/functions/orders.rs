//! Orders and the keys that make them: `fc_order_create`, `fc_order_get`, `fc_order_cancel`,
//! `fc_refund`, and the idempotency claims (`fc_idem_claim`, `fc_idem_release`) that bind an
//! order's (or a payment's) key in one partition whatever partition its effect lives in.

use super::{Access, Function, Reply, Result, Spec, request_arg};
use crate::ids::{OrderId, RequestId};
use crate::inventory::{CancelOutcome, CancelReason, Now, Order, OrderRequest};
use crate::keys::{KeySchema, Partition};
use crate::order::{OrderEvent, OrderState};
use crate::problem::Rejection;

/// `fc_order_create`: turns an active reservation into an order awaiting payment.
pub const ORDER_CREATE: Spec = Spec {
    name: "fc_order_create",
    access: Access::Write,
    keys: &[
        "sku",
        "reservation",
        "order",
        "idempotency",
        "events",
        "expiries",
        "deadlines",
        "guard",
    ],
    args: &[
        "rid",
        "oid",
        "buyer",
        "fingerprint",
        "now",
        "idem_ttl",
        "request",
    ],
};

/// `fc_idem_claim`: binds an idempotency key to the first request that used it.
pub const IDEM_CLAIM: Spec = Spec {
    name: "fc_idem_claim",
    access: Access::Write,
    keys: &["claim", "guard"],
    args: &["fingerprint", "ttl_ms"],
};

/// `fc_idem_release`: gives back a claim whose request was refused before any decision.
pub const IDEM_RELEASE: Spec = Spec {
    name: "fc_idem_release",
    access: Access::Write,
    keys: &["claim", "guard"],
    args: &["fingerprint"],
};

/// `fc_order_get`: an order's current record.
pub const ORDER_GET: Spec = Spec {
    name: "fc_order_get",
    access: Access::Read,
    keys: &["order"],
    args: &[],
};

/// `fc_order_cancel`: cancels an unpaid order (deadline passed, or the buyer asked).
pub const ORDER_CANCEL: Spec = Spec {
    name: "fc_order_cancel",
    access: Access::Write,
    keys: &["sku", "order", "events", "deadlines", "guard"],
    args: &["oid", "reason", "now", "request"],
};

/// `fc_refund`: a refund requested or completed.
pub const REFUND: Spec = Spec {
    name: "fc_refund",
    access: Access::Write,
    keys: &["order", "events", "guard"],
    args: &["event", "now"],
};

/// An order as `fc_order_create` and `fc_order_get` answer it: `ok(id state sku qty amount
/// currency deadline rsv buyer)`.
fn order_from(reply: &Reply) -> Result<Order> {
    let bad = || reply.unexpected();
    Ok(Order {
        id: OrderId::parse(&reply.text(0)?).map_err(|_| bad())?,
        state: OrderState::parse(&reply.text(1)?).ok_or_else(bad)?,
        sku: reply.text(2)?,
        quantity: reply.uint(3)?,
        amount: reply.uint(4)?,
        currency: reply.text(5)?,
        payment_deadline: reply.uint(6)?,
        reservation: reply.text(7)?,
        buyer: reply.text(8)?,
        replayed: reply.replayed,
    })
}

/// A call of `fc_order_create`.
pub(crate) struct OrderCreate<'a> {
    pub(crate) req: &'a OrderRequest,
    /// The order's id (its reservation's [`crate::ids::ReservationId::order_id`]).
    pub(crate) order: &'a OrderId,
    pub(crate) now: Now,
    pub(crate) idempotency_ttl_ms: u64,
}

impl Function<8, 7> for OrderCreate<'_> {
    const SPEC: Spec = ORDER_CREATE;
    type Output = Order;

    fn keys(&self, schema: &KeySchema) -> [String; 8] {
        let (req, id) = (self.req, &self.req.reservation);
        let p = id.partition();
        [
            schema.sku(p, id.sku()),
            schema.reservation(id),
            schema.order(self.order),
            schema.idempotency(p, "ord", &req.buyer, &req.key),
            schema.events(p),
            schema.expiries(p),
            schema.deadlines(p),
            schema.guard(p),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 7] {
        [
            self.req.reservation.to_string(),
            self.order.to_string(),
            self.req.buyer.to_string(),
            self.req.fingerprint.clone(),
            self.now.arg(),
            self.idempotency_ttl_ms.to_string(),
            request_arg(self.req.request.as_ref()),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Order> {
        match reply.code.as_str() {
            "ok" => order_from(&reply),
            "unknown_reservation" => Err(Rejection::UnknownReservation),
            "reservation_gone" => Err(Rejection::ReservationGone),
            "already_ordered" => Err(Rejection::AlreadyOrdered {
                order_id: reply.text(0)?,
            }),
            "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_idem_claim`.
pub(crate) struct IdemClaim<'a> {
    /// The partition the claim lives in.
    pub(crate) partition: Partition,
    /// The claim's key ([`KeySchema::order_claim`], [`KeySchema::psp_claim`]).
    pub(crate) key: &'a str,
    pub(crate) fingerprint: &'a str,
    pub(crate) ttl_ms: u64,
}

impl Function<2, 2> for IdemClaim<'_> {
    const SPEC: Spec = IDEM_CLAIM;
    type Output = ();

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [self.key.to_owned(), schema.guard(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 2] {
        [self.fingerprint.to_owned(), self.ttl_ms.to_string()]
    }

    fn decode(&self, reply: Reply) -> Result<()> {
        match reply.code.as_str() {
            "claimed" | "same" => Ok(()),
            "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_idem_release`.
pub(crate) struct IdemRelease<'a> {
    /// The partition the claim lives in.
    pub(crate) partition: Partition,
    /// The claim's key.
    pub(crate) key: &'a str,
    pub(crate) fingerprint: &'a str,
}

impl Function<2, 1> for IdemRelease<'_> {
    const SPEC: Spec = IDEM_RELEASE;
    type Output = ();

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [self.key.to_owned(), schema.guard(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 1] {
        [self.fingerprint.to_owned()]
    }

    fn decode(&self, reply: Reply) -> Result<()> {
        match reply.code.as_str() {
            "released" | "kept" => Ok(()),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_order_get`.
pub(crate) struct OrderGet<'a> {
    pub(crate) id: &'a OrderId,
}

impl Function<1, 0> for OrderGet<'_> {
    const SPEC: Spec = ORDER_GET;
    type Output = Order;

    fn keys(&self, schema: &KeySchema) -> [String; 1] {
        [schema.order(self.id)]
    }

    fn args(&self, _: &KeySchema) -> [String; 0] {
        []
    }

    fn decode(&self, reply: Reply) -> Result<Order> {
        match reply.code.as_str() {
            "ok" => order_from(&reply),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_order_cancel`.
pub(crate) struct OrderCancel<'a> {
    pub(crate) id: &'a OrderId,
    pub(crate) reason: CancelReason,
    pub(crate) now: Now,
    /// The HTTP request asking (a buyer's cancel); `None` for the deadline's timer.
    pub(crate) request: Option<&'a RequestId>,
}

impl Function<5, 4> for OrderCancel<'_> {
    const SPEC: Spec = ORDER_CANCEL;
    type Output = CancelOutcome;

    fn keys(&self, schema: &KeySchema) -> [String; 5] {
        let p = self.id.partition();
        [
            schema.sku(p, self.id.sku()),
            schema.order(self.id),
            schema.events(p),
            schema.deadlines(p),
            schema.guard(p),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 4] {
        [
            self.id.to_string(),
            // The name the event records, from the stream's one contract.
            crate::event::cancel_reason_name(self.reason).into(),
            self.now.arg(),
            request_arg(self.request),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<CancelOutcome> {
        match reply.code.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "not_due" => Ok(CancelOutcome::NotDue {
                deadline: reply.uint(0)?,
            }),
            "illegal" => Err(Rejection::IllegalTransition {
                state: reply.text(0)?,
            }),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_refund`.
pub(crate) struct Refund<'a> {
    pub(crate) id: &'a OrderId,
    /// [`OrderEvent::RefundRequest`] or [`OrderEvent::RefundComplete`].
    pub(crate) event: OrderEvent,
    pub(crate) now: Now,
}

impl Function<3, 2> for Refund<'_> {
    const SPEC: Spec = REFUND;
    /// The order's state after the step.
    type Output = OrderState;

    fn keys(&self, schema: &KeySchema) -> [String; 3] {
        let p = self.id.partition();
        [schema.order(self.id), schema.events(p), schema.guard(p)]
    }

    fn args(&self, _: &KeySchema) -> [String; 2] {
        [self.event.as_str().into(), self.now.arg()]
    }

    fn decode(&self, reply: Reply) -> Result<OrderState> {
        match reply.code.as_str() {
            "ok" => OrderState::parse(&reply.text(0)?).ok_or_else(|| reply.unexpected()),
            "illegal" => Err(Rejection::IllegalTransition {
                state: reply.text(0)?,
            }),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
    }
}
