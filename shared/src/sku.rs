//! A SKU on sale: its terms (price, window, limits) and how its stock is split into segments.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Currency, SkuId, ValidationError};
use crate::keys::{KeySchema, Partition};
use crate::problem::Rejection;

/// A SKU's terms, as an operator loads (preheats) them before a drop. Besides each field's
/// range: `segments` at most `stock`, `sale_end` after `sale_start` (422 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "SkuTerms", transform = SkuSpec::ranges)
)]
#[serde(deny_unknown_fields)]
pub struct SkuSpec {
    /// The SKU.
    pub sku: SkuId,
    /// Units on sale, 1 to [`SkuSpec::MAX_STOCK`].
    pub stock: u64,
    /// Segment count; default: one per partition, at most one per unit.
    #[serde(default)]
    pub segments: Option<u16>,
    /// Price of one unit in minor units (cents).
    pub price: u64,
    /// Currency of the price.
    pub currency: Currency,
    /// Sale opens (unix ms, inclusive).
    pub sale_start: u64,
    /// Sale closes (unix ms, exclusive).
    pub sale_end: u64,
    /// Most units one buyer may hold or buy; 0 means no limit.
    #[serde(default)]
    pub per_buyer_limit: u32,
    /// How long a reservation holds stock before it expires, in ms.
    #[serde(default = "SkuSpec::default_reservation_ttl")]
    pub reservation_ttl_ms: u64,
    /// How long an order waits for payment before it is cancelled, in ms.
    #[serde(default = "SkuSpec::default_payment_window")]
    pub payment_window_ms: u64,
}

/// One segment's share of the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentShare {
    /// Segment number, 0-based.
    pub segment: u16,
    /// Units it starts with.
    pub initial: u64,
}

impl SkuSpec {
    /// Largest stock one SKU may have.
    pub const MAX_STOCK: u64 = 1_000_000_000;
    /// Most segments one SKU may have.
    pub const MAX_SEGMENTS: u16 = 64;
    /// Largest price of one unit, in minor units; amounts stay exact in Lua's doubles.
    pub const MAX_PRICE: u64 = 1_000_000_000_000;
    /// Shortest reservation TTL and payment window, ms (1 s).
    pub const MIN_WINDOW_MS: u64 = 1_000;
    /// Longest reservation TTL and payment window, ms (7 days).
    pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

    /// The ranges [`SkuSpec::validate`] checks, in the JSON Schema.
    #[cfg(feature = "openapi")]
    fn ranges(schema: &mut schemars::Schema) {
        use crate::schema::bound;
        bound(schema, "stock", 1, Self::MAX_STOCK);
        bound(schema, "segments", 1, Self::MAX_SEGMENTS.into());
        bound(schema, "price", 0, Self::MAX_PRICE);
        for field in ["reservation_ttl_ms", "payment_window_ms"] {
            bound(schema, field, Self::MIN_WINDOW_MS, Self::MAX_WINDOW_MS);
        }
    }

    fn default_reservation_ttl() -> u64 {
        10 * 60 * 1000
    }

    fn default_payment_window() -> u64 {
        15 * 60 * 1000
    }

    /// Checks each field's range, then the fields against each other.
    ///
    /// # Errors
    /// [`Rejection::Invalid`] (400) naming the first field out of its range (the ranges the
    /// OpenAPI schema states); [`Rejection::Inconsistent`] (422) when the fields disagree:
    /// more segments than units, or a sale that ends before it starts.
    pub fn validate(&self) -> Result<(), Rejection> {
        if !(1..=Self::MAX_STOCK).contains(&self.stock) {
            return Err(ValidationError::new(
                "stock",
                format!("must be between 1 and {}", Self::MAX_STOCK),
            )
            .into());
        }
        if let Some(n) = self.segments
            && !(1..=Self::MAX_SEGMENTS).contains(&n)
        {
            return Err(ValidationError::new(
                "segments",
                format!("must be between 1 and {}", Self::MAX_SEGMENTS),
            )
            .into());
        }
        if self.price > Self::MAX_PRICE {
            return Err(ValidationError::new(
                "price",
                format!("must be at most {}", Self::MAX_PRICE),
            )
            .into());
        }
        for (field, value) in [
            ("reservation_ttl_ms", self.reservation_ttl_ms),
            ("payment_window_ms", self.payment_window_ms),
        ] {
            if !(Self::MIN_WINDOW_MS..=Self::MAX_WINDOW_MS).contains(&value) {
                return Err(ValidationError::new(field, "must be between 1 s and 7 days").into());
            }
        }
        if self.segments.is_some_and(|n| u64::from(n) > self.stock) {
            return Err(Rejection::Inconsistent(ValidationError::new(
                "segments",
                "must be at most the stock",
            )));
        }
        if self.sale_end <= self.sale_start {
            return Err(Rejection::Inconsistent(ValidationError::new(
                "sale_end",
                "must be after sale_start",
            )));
        }
        Ok(())
    }

    /// The segment count in effect: as asked, or one per partition (never more than units).
    /// Segments beyond the partition count share partitions and add no parallelism.
    pub fn segment_count(&self, schema: &KeySchema) -> u16 {
        self.segments.unwrap_or_else(|| {
            let per_partition = u64::from(schema.partition_count().min(Self::MAX_SEGMENTS));
            per_partition.min(self.stock) as u16
        })
    }

    /// Splits the stock evenly over the segments; the first `stock mod n` get one more.
    pub fn shares(&self, schema: &KeySchema) -> Vec<SegmentShare> {
        let n = u64::from(self.segment_count(schema));
        (0..n)
            .map(|i| SegmentShare {
                segment: i as u16,
                initial: self.stock / n + u64::from(i < self.stock % n),
            })
            .collect()
    }

    /// The shares grouped by the partition that holds them; partitions without a segment are
    /// absent (they still get the SKU's terms, see the library's `fc_load`).
    pub fn shares_by_partition(
        &self,
        schema: &KeySchema,
    ) -> BTreeMap<Partition, Vec<SegmentShare>> {
        let mut out: BTreeMap<Partition, Vec<SegmentShare>> = BTreeMap::new();
        for share in self.shares(schema) {
            out.entry(schema.segment_partition(&self.sku, share.segment))
                .or_default()
                .push(share);
        }
        out
    }

    /// A digest of the terms: loading the same SKU twice with the same terms is a no-op,
    /// with other terms a conflict.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&crate::digest(&[&json])[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(stock: u64, segments: Option<u16>) -> SkuSpec {
        SkuSpec {
            sku: SkuId::parse("drop").unwrap(),
            stock,
            segments,
            price: 1999,
            currency: Currency::parse("EUR").unwrap(),
            sale_start: 1_000,
            sale_end: 10_000_000,
            per_buyer_limit: 2,
            reservation_ttl_ms: 60_000,
            payment_window_ms: 60_000,
        }
    }

    #[test]
    fn shares_sum_to_stock() {
        let schema = KeySchema::default();
        for (stock, segs) in [
            (100, Some(16)),
            (7, None),
            (1, None),
            (1_000_003, Some(64)),
            (16, None),
        ] {
            let shares = spec(stock, segs).shares(&schema);
            assert_eq!(shares.iter().map(|s| s.initial).sum::<u64>(), stock);
            let (min, max) = (
                shares.iter().map(|s| s.initial).min().unwrap(),
                shares.iter().map(|s| s.initial).max().unwrap(),
            );
            assert!(max - min <= 1);
        }
        assert_eq!(spec(7, None).segment_count(&schema), 7);
        assert_eq!(spec(1000, None).segment_count(&schema), 16);
    }

    #[test]
    fn segments_beyond_partitions_share_partitions() {
        let schema = KeySchema::new(4).unwrap();
        let by_part = spec(64, Some(8)).shares_by_partition(&schema);
        assert_eq!(by_part.len(), 4);
        assert!(by_part.values().all(|v| v.len() == 2));
    }

    /// The field a refusal names, and whether it is a range (400) or a disagreement (422).
    fn refusal(s: &SkuSpec) -> (u16, &'static str) {
        match s.validate() {
            Err(r) => match &r {
                Rejection::Invalid(e) | Rejection::Inconsistent(e) => (r.status(), e.field),
                other => panic!("{other:?}"),
            },
            Ok(()) => panic!("accepted"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec(100, Some(16)).validate().is_ok());
        assert_eq!(refusal(&spec(0, None)), (400, "stock"));
        assert_eq!(refusal(&spec(3, Some(4))), (422, "segments"));
        assert_eq!(refusal(&spec(100, Some(65))), (400, "segments"));
        assert_eq!(refusal(&spec(100, Some(0))), (400, "segments"));
        let mut s = spec(100, None);
        s.sale_end = s.sale_start;
        assert_eq!(refusal(&s), (422, "sale_end"));
        let mut s = spec(100, None);
        s.reservation_ttl_ms = 10;
        assert_eq!(refusal(&s), (400, "reservation_ttl_ms"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SkuSpec>(
            r#"{"sku":"a","stock":1,"price":1,"currency":"EUR","sale_start":0,"sale_end":1,"colour":"red"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
