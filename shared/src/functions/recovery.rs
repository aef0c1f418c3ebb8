//! Settlement's side of the fence (see [`crate::recovery`]): `fc_guard`, `fc_verify`,
//! `fc_fence_state`, and the `fc_restore_*` functions that write what the ledger knows into a
//! fenced partition.

use super::stock::LOAD;
use super::{Access, Function, Reply, Result, Spec};
use crate::ids::{BuyerId, OrderId, PspEventId, ReservationId, SkuId};
use crate::inventory::PaymentOutcome;
use crate::keys::{KeySchema, Partition};
use crate::order::OrderState;
use crate::recovery::{Guarded, OrderImage, ReservationImage, Restored, SkuImage, Verified};

/// `fc_guard`: marks a partition as settled into a ledger.
pub const GUARD: Spec = Spec {
    name: "fc_guard",
    access: Access::Fence,
    keys: &["guard"],
    args: &["lost"],
};

/// `fc_verify`: lifts a partition's fence when its stream did not go back in time.
pub const VERIFY: Spec = Spec {
    name: "fc_verify",
    access: Access::Fence,
    keys: &["guard", "events"],
    args: &["highest"],
};

/// `fc_fence_state`: whether writes to a partition are fenced now.
pub const FENCE_STATE: Spec = Spec {
    name: "fc_fence_state",
    access: Access::Read,
    keys: &["guard"],
    args: &[],
};

/// `fc_restore_sku`: one partition's SKU hash, terms and levels, as the ledger has them.
pub const RESTORE_SKU: Spec = Spec {
    name: "fc_restore_sku",
    access: Access::Restore,
    keys: &["sku", "guard"],
    // `fc_load`'s arguments but `now`; its `shares` carry every level:
    // `seg:initial:available:reserved:ordered:sold`, joined by commas.
    args: LOAD.args.split_at(13).0,
};

/// `fc_restore_reservation`: a reservation's record and its expiry timer while active.
pub const RESTORE_RESERVATION: Spec = Spec {
    name: "fc_restore_reservation",
    access: Access::Restore,
    keys: &["reservation", "expiries", "guard"],
    args: &["rid", "state", "seg", "qty", "expires", "buyer", "keep_ms"],
};

/// `fc_restore_decision`: the home record of a reservation a fallback search found elsewhere.
pub const RESTORE_DECISION: Spec = Spec {
    name: "fc_restore_decision",
    access: Access::Restore,
    keys: &["record", "guard"],
    args: &["rid", "seg", "expires", "ttl_ms"],
};

/// `fc_restore_order`: an order's record and its payment deadline timer while unpaid.
pub const RESTORE_ORDER: Spec = Spec {
    name: "fc_restore_order",
    access: Access::Restore,
    keys: &["order", "deadlines", "guard"],
    args: &[
        "oid",
        "rsv",
        "sku",
        "seg",
        "qty",
        "buyer",
        "amount",
        "cur",
        "state",
        "deadline",
        "created",
        "psp",
        "paid_at",
        "cancelled_at",
    ],
};

/// `fc_restore_payment`: a payment provider event's recorded outcome.
pub const RESTORE_PAYMENT: Spec = Spec {
    name: "fc_restore_payment",
    access: Access::Restore,
    keys: &["psp_event", "guard"],
    args: &["code", "state", "ttl_ms"],
};

/// `fc_restore_count`: a buyer's purchase counter, raised to what the ledger counts.
pub const RESTORE_COUNT: Spec = Spec {
    name: "fc_restore_count",
    access: Access::Restore,
    keys: &["purchases", "guard"],
    args: &["units"],
};

/// `fc_restore_stream`: moves a stream's last id up to the ledger's highest applied id.
pub const RESTORE_STREAM: Spec = Spec {
    name: "fc_restore_stream",
    access: Access::Restore,
    keys: &["events", "guard"],
    args: &["highest"],
};

/// A call of `fc_guard`.
pub(crate) struct Guard {
    pub(crate) partition: Partition,
    /// The ledger holds events of the partition already.
    pub(crate) ledger_has_events: bool,
}

impl Function<1, 1> for Guard {
    const SPEC: Spec = GUARD;
    type Output = Guarded;

    fn keys(&self, schema: &KeySchema) -> [String; 1] {
        [schema.guard(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 1] {
        let lost = if self.ledger_has_events { "1" } else { "0" };
        [lost.to_owned()]
    }

    fn decode(&self, reply: Reply) -> Result<Guarded> {
        match (reply.code.as_str(), reply.replayed) {
            ("guarded", false) => Ok(Guarded::New),
            ("guarded", true) => Ok(Guarded::Existing),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_verify`.
pub(crate) struct Verify<'a> {
    pub(crate) partition: Partition,
    /// The ledger's highest applied id for the partition, `None` when it has none.
    pub(crate) highest: Option<&'a str>,
}

impl Function<2, 1> for Verify<'_> {
    const SPEC: Spec = VERIFY;
    type Output = Verified;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [schema.guard(self.partition), schema.events(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 1] {
        [self.highest.unwrap_or_default().to_owned()]
    }

    fn decode(&self, reply: Reply) -> Result<Verified> {
        match reply.code.as_str() {
            "verified" if !reply.replayed => Ok(Verified::Lifted),
            "verified" => Ok(Verified::Open),
            "behind" => Ok(Verified::Behind {
                last: reply.text(0).ok().filter(|s| !s.is_empty()),
            }),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_fence_state`: whether writes to `partition` are fenced now. Public, for
/// settlement's dead-letter commands, which call it over their own connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceState {
    /// The partition.
    pub partition: Partition,
}

impl Function<1, 0> for FenceState {
    const SPEC: Spec = FENCE_STATE;
    /// Whether the partition is fenced.
    type Output = bool;

    fn keys(&self, schema: &KeySchema) -> [String; 1] {
        [schema.guard(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 0] {
        []
    }

    fn decode(&self, reply: Reply) -> Result<bool> {
        match reply.code.as_str() {
            "ok" => Ok(reply.uint(0)? == 1),
            _ => Err(reply.unexpected()),
        }
    }
}

/// What every restore answers.
fn restored(reply: &Reply) -> Result<Restored> {
    match reply.code.as_str() {
        "restored" => Ok(Restored::Written),
        "not_fenced" => Ok(Restored::NotFenced),
        _ => Err(reply.unexpected()),
    }
}

/// A call of `fc_restore_sku`.
pub(crate) struct RestoreSku<'a> {
    pub(crate) partition: Partition,
    pub(crate) image: &'a SkuImage,
}

impl Function<2, 13> for RestoreSku<'_> {
    const SPEC: Spec = RESTORE_SKU;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [
            schema.sku(self.partition, &self.image.sku),
            schema.guard(self.partition),
        ]
    }

    fn args(&self, schema: &KeySchema) -> [String; 13] {
        let (image, t) = (self.image, &self.image.terms);
        let shares: Vec<String> = image
            .segments
            .iter()
            .map(|s| {
                format!(
                    "{}:{}:{}:{}:{}:{}",
                    s.segment, s.initial, s.available, s.reserved, s.ordered, s.sold
                )
            })
            .collect();
        [
            image.sku.to_string(),
            image.fingerprint.clone(),
            t.stock.to_string(),
            t.segments.to_string(),
            t.price.to_string(),
            t.currency.clone(),
            t.sale_start.to_string(),
            t.sale_end.to_string(),
            t.per_buyer_limit.to_string(),
            t.reservation_ttl_ms.to_string(),
            t.payment_window_ms.to_string(),
            schema.partition_count().to_string(),
            shares.join(","),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_reservation`.
pub(crate) struct RestoreReservation<'a> {
    pub(crate) image: &'a ReservationImage,
}

impl Function<3, 7> for RestoreReservation<'_> {
    const SPEC: Spec = RESTORE_RESERVATION;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 3] {
        let (id, p) = (&self.image.id, self.image.id.partition());
        [schema.reservation(id), schema.expiries(p), schema.guard(p)]
    }

    fn args(&self, _: &KeySchema) -> [String; 7] {
        let r = self.image;
        [
            r.id.to_string(),
            r.state.as_str().to_owned(),
            r.segment.to_string(),
            r.quantity.to_string(),
            r.expires_at.to_string(),
            r.buyer.to_string(),
            r.keep_ms
                .map(|ms| ms.max(1).to_string())
                .unwrap_or_default(),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_decision`.
pub(crate) struct RestoreDecision<'a> {
    /// The reservation the search found.
    pub(crate) found: &'a ReservationImage,
    /// The request's record in the buyer's home partition.
    pub(crate) record: &'a ReservationId,
    pub(crate) ttl_ms: u64,
}

impl Function<2, 4> for RestoreDecision<'_> {
    const SPEC: Spec = RESTORE_DECISION;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [
            schema.reservation(self.record),
            schema.guard(self.record.partition()),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 4] {
        let found = self.found;
        [
            found.id.to_string(),
            found.segment.to_string(),
            found.expires_at.to_string(),
            self.ttl_ms.max(1).to_string(),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_order`.
pub(crate) struct RestoreOrder<'a> {
    pub(crate) image: &'a OrderImage,
}

impl Function<3, 14> for RestoreOrder<'_> {
    const SPEC: Spec = RESTORE_ORDER;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 3] {
        let (id, p) = (&self.image.id, self.image.id.partition());
        [schema.order(id), schema.deadlines(p), schema.guard(p)]
    }

    fn args(&self, _: &KeySchema) -> [String; 14] {
        let o = self.image;
        let (psp, paid_at) = o
            .paid
            .as_ref()
            .map_or((String::new(), String::new()), |(e, at)| {
                (e.clone(), at.to_string())
            });
        [
            o.id.to_string(),
            o.reservation.to_string(),
            o.id.sku().to_string(),
            o.segment.to_string(),
            o.quantity.to_string(),
            o.buyer.to_string(),
            o.amount.to_string(),
            o.currency.clone(),
            o.state.as_str().to_owned(),
            o.deadline.to_string(),
            o.created_at.to_string(),
            psp,
            paid_at,
            o.cancelled_at.map(|t| t.to_string()).unwrap_or_default(),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_payment`.
pub(crate) struct RestorePayment<'a> {
    pub(crate) order: &'a OrderId,
    pub(crate) event: &'a PspEventId,
    pub(crate) outcome: &'a PaymentOutcome,
    /// The order's state, which the stored answer carries.
    pub(crate) state: OrderState,
    pub(crate) ttl_ms: u64,
}

impl Function<2, 3> for RestorePayment<'_> {
    const SPEC: Spec = RESTORE_PAYMENT;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        let p = self.order.partition();
        [schema.psp_event(p, self.event), schema.guard(p)]
    }

    fn args(&self, _: &KeySchema) -> [String; 3] {
        [
            super::payments::outcome_code(self.outcome).to_owned(),
            self.state.as_str().to_owned(),
            self.ttl_ms.max(1).to_string(),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_count`.
pub(crate) struct RestoreCount<'a> {
    pub(crate) sku: &'a SkuId,
    pub(crate) buyer: &'a BuyerId,
    pub(crate) units: u64,
}

impl Function<2, 1> for RestoreCount<'_> {
    const SPEC: Spec = RESTORE_COUNT;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        let home = schema.home_of_buyer(self.buyer);
        [
            schema.purchase_count(home, self.sku, self.buyer),
            schema.guard(home),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 1] {
        [self.units.to_string()]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}

/// A call of `fc_restore_stream`.
pub(crate) struct RestoreStream<'a> {
    pub(crate) partition: Partition,
    /// The ledger's highest applied id, `ms-seq`.
    pub(crate) highest: &'a str,
}

impl Function<2, 1> for RestoreStream<'_> {
    const SPEC: Spec = RESTORE_STREAM;
    type Output = Restored;

    fn keys(&self, schema: &KeySchema) -> [String; 2] {
        [schema.events(self.partition), schema.guard(self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 1] {
        [self.highest.to_owned()]
    }

    fn decode(&self, reply: Reply) -> Result<Restored> {
        restored(&reply)
    }
}
