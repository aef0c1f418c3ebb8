//! A SKU's stock and the timers: `fc_load` (one partition's terms and segments), `fc_stock`
//! (one partition's terms and levels) and `fc_due` (what a timer set holds that is due).

use super::{Access, Function, Reply, Result, Spec, request_arg};
use crate::ids::{RequestId, SkuId, ValidationError};
use crate::inventory::{LoadOutcome, Now, SegmentLevel, SkuTerms};
use crate::keys::{KeySchema, Partition};
use crate::problem::Rejection;
use crate::sku::SkuSpec;

/// `fc_load`: preheats one partition with a SKU's terms and its segments there.
pub const LOAD: Spec = Spec {
    name: "fc_load",
    access: Access::Write,
    keys: &["sku", "events", "guard"],
    args: &[
        "sku",
        "fingerprint",
        "stock",
        "segs",
        "price",
        "cur",
        "start",
        "end",
        "limit",
        "ttl",
        "paywin",
        "parts",
        "shares",
        "now",
        "request",
    ],
};

/// `fc_stock`: a SKU's terms and the levels of its segments in one partition.
pub const STOCK: Spec = Spec {
    name: "fc_stock",
    access: Access::Read,
    keys: &["sku"],
    args: &[],
};

/// `fc_due`: the ids in a timer set (reservations by expiry, orders by deadline) that are due.
pub const DUE: Spec = Spec {
    name: "fc_due",
    access: Access::Read,
    keys: &["timers"],
    args: &["now", "limit"],
};

/// A call of `fc_load`.
pub(crate) struct Load<'a> {
    pub(crate) spec: &'a SkuSpec,
    pub(crate) partition: Partition,
    /// The terms' fingerprint ([`SkuSpec::fingerprint`]).
    pub(crate) fingerprint: &'a str,
    /// The segments living in the partition: `seg:initial` joined by commas.
    pub(crate) shares: &'a str,
    pub(crate) now: Now,
    /// The HTTP request loading it (an admin's `PUT`).
    pub(crate) request: Option<&'a RequestId>,
}

impl Function<3, 15> for Load<'_> {
    const SPEC: Spec = LOAD;
    type Output = LoadOutcome;

    fn keys(&self, schema: &KeySchema) -> [String; 3] {
        let p = self.partition;
        [
            schema.sku(p, &self.spec.sku),
            schema.events(p),
            schema.guard(p),
        ]
    }

    fn args(&self, schema: &KeySchema) -> [String; 15] {
        let spec = self.spec;
        [
            spec.sku.to_string(),
            self.fingerprint.to_owned(),
            spec.stock.to_string(),
            spec.segment_count(schema).to_string(),
            spec.price.to_string(),
            spec.currency.to_string(),
            spec.sale_start.to_string(),
            spec.sale_end.to_string(),
            spec.per_buyer_limit.to_string(),
            spec.reservation_ttl_ms.to_string(),
            spec.payment_window_ms.to_string(),
            schema.partition_count().to_string(),
            self.shares.to_owned(),
            self.now.arg(),
            request_arg(self.request),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<LoadOutcome> {
        match reply.code.as_str() {
            "loaded" => Ok(LoadOutcome::Loaded),
            "unchanged" => Ok(LoadOutcome::Unchanged),
            "conflict" => Err(Rejection::SkuConflict),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_stock`.
pub(crate) struct Stock<'a> {
    pub(crate) sku: &'a SkuId,
    pub(crate) partition: Partition,
}

impl Function<1, 0> for Stock<'_> {
    const SPEC: Spec = STOCK;
    /// The terms and the partition's segments; `None` where the SKU is not loaded.
    type Output = Option<(SkuTerms, Vec<SegmentLevel>)>;

    fn keys(&self, schema: &KeySchema) -> [String; 1] {
        [schema.sku(self.partition, self.sku)]
    }

    fn args(&self, _: &KeySchema) -> [String; 0] {
        []
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        match reply.code.as_str() {
            "ok" => Ok(Some((
                terms_from(&reply)?,
                levels_from(&reply, self.partition)?,
            ))),
            "unknown_sku" => Ok(None),
            _ => Err(reply.unexpected()),
        }
    }
}

/// The terms: `stock segs price cur start end limit ttl paywin`, then `parts`.
fn terms_from(reply: &Reply) -> Result<SkuTerms> {
    Ok(SkuTerms {
        stock: reply.uint(0)?,
        segments: reply.u16(1)?,
        price: reply.uint(2)?,
        currency: reply.text(3)?,
        sale_start: reply.uint(4)?,
        sale_end: reply.uint(5)?,
        per_buyer_limit: reply.uint(6)?,
        reservation_ttl_ms: reply.uint(7)?,
        payment_window_ms: reply.uint(8)?,
    })
}

/// Segment levels after the terms: field 10 is the count, then 6 numbers per segment.
fn levels_from(reply: &Reply, p: Partition) -> Result<Vec<SegmentLevel>> {
    let count = usize::try_from(reply.uint(10)?).map_err(|_| reply.unexpected())?;
    (0..count)
        .map(|k| {
            let at = 11 + k * 6;
            Ok(SegmentLevel {
                segment: reply.u16(at)?,
                partition: p.index(),
                initial: reply.uint(at + 1)?,
                available: reply.uint(at + 2)?,
                reserved: reply.uint(at + 3)?,
                ordered: reply.uint(at + 4)?,
                sold: reply.uint(at + 5)?,
            })
        })
        .collect()
}

/// A call of `fc_due`: the due ids of one timer set, parsed as `T`.
pub(crate) struct Due<T> {
    /// The timer set's key in a partition ([`KeySchema::expiries`], [`KeySchema::deadlines`]).
    pub(crate) timers: fn(&KeySchema, Partition) -> String,
    pub(crate) partition: Partition,
    pub(crate) now: Now,
    pub(crate) limit: usize,
    /// How an id in the set parses.
    pub(crate) parse: fn(&str) -> Result<T, ValidationError>,
}

impl<T> Function<1, 2> for Due<T> {
    const SPEC: Spec = DUE;
    /// The due ids, oldest first.
    type Output = Vec<T>;

    fn keys(&self, schema: &KeySchema) -> [String; 1] {
        [(self.timers)(schema, self.partition)]
    }

    fn args(&self, _: &KeySchema) -> [String; 2] {
        [self.now.arg(), self.limit.to_string()]
    }

    fn decode(&self, reply: Reply) -> Result<Vec<T>> {
        if reply.code != "ok" {
            return Err(reply.unexpected());
        }
        (0..reply.len())
            .map(|i| (self.parse)(&reply.text(i)?).map_err(|_| reply.unexpected()))
            .collect()
    }
}
