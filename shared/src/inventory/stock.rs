//! A SKU's stock: loading its terms and segments, reading its levels, and the timers' lists
//! of what is due.

use serde::Serialize;

use super::{Inventory, Now, Result};
use crate::exec::RedisExecutor;
use crate::functions::{
    self,
    stock::{Due, Load, Stock},
};
use crate::ids::{OrderId, RequestId, ReservationId, SkuId};
use crate::keys::{KeySchema, Partition};
use crate::problem::Rejection;
use crate::sku::SkuSpec;

/// Whether a load wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LoadOutcome {
    /// The SKU is now on the shelf.
    Loaded,
    /// The same terms were already loaded; nothing changed.
    Unchanged,
}

/// A SKU's terms, as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "LoadedTerms")
)]
pub struct SkuTerms {
    /// Total units loaded.
    pub stock: u64,
    /// Segment count.
    pub segments: u16,
    /// Price of one unit, minor units.
    pub price: u64,
    /// Currency.
    #[cfg_attr(feature = "openapi", schemars(with = "crate::ids::Currency"))]
    pub currency: String,
    /// Sale opens, unix ms.
    pub sale_start: u64,
    /// Sale closes, unix ms.
    pub sale_end: u64,
    /// Units per buyer, 0 for none.
    pub per_buyer_limit: u64,
    /// Reservation lifetime, ms.
    pub reservation_ttl_ms: u64,
    /// Payment window, ms.
    pub payment_window_ms: u64,
}

/// One segment's levels: `initial = available + reserved + ordered + sold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct SegmentLevel {
    /// Segment number.
    pub segment: u16,
    /// The partition holding it.
    pub partition: u16,
    /// Units loaded.
    pub initial: u64,
    /// Units free to reserve.
    pub available: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// Units in orders awaiting payment.
    pub ordered: u64,
    /// Units paid for.
    pub sold: u64,
}

impl SegmentLevel {
    /// Whether the segment's books balance.
    pub fn balances(&self) -> bool {
        self.initial == self.available + self.reserved + self.ordered + self.sold
    }
}

/// A SKU's terms and every segment's levels (each partition read atomically; the partitions
/// one after another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockLevels {
    /// The terms.
    pub terms: SkuTerms,
    /// The segments, in segment order.
    pub segments: Vec<SegmentLevel>,
}

impl StockLevels {
    fn sum(&self, f: impl Fn(&SegmentLevel) -> u64) -> u64 {
        self.segments.iter().map(f).sum()
    }
    /// Units free to reserve.
    pub fn available(&self) -> u64 {
        self.sum(|s| s.available)
    }
    /// Units held by live reservations.
    pub fn reserved(&self) -> u64 {
        self.sum(|s| s.reserved)
    }
    /// Units in unpaid orders.
    pub fn ordered(&self) -> u64 {
        self.sum(|s| s.ordered)
    }
    /// Units sold.
    pub fn sold(&self) -> u64 {
        self.sum(|s| s.sold)
    }
    /// `initial = available + reserved + ordered + sold`, for every segment and in total.
    pub fn invariant_holds(&self) -> bool {
        self.segments.iter().all(SegmentLevel::balances)
            && self.terms.stock == self.available() + self.reserved() + self.ordered() + self.sold()
    }
}

impl<E: RedisExecutor> Inventory<E> {
    /// Loads (preheats) a SKU: its terms into every partition, its segments into theirs.
    /// Loading the same terms again changes nothing.
    ///
    /// The partitions are loaded one call each (on a cluster they live on several masters, so
    /// no one call can load them all). A load that stops midway — a master unreachable — has
    /// loaded some partitions and not the others; the same load sent again skips the loaded
    /// ones (`unchanged`) and loads the rest, so retrying converges, and the answer says so.
    ///
    /// # Errors
    /// [`Rejection::Invalid`] for bad terms, [`Rejection::SkuConflict`] when the SKU exists
    /// with other terms, [`Rejection::Unavailable`] when Redis failed (retry the same load).
    pub async fn load_sku(&self, spec: &SkuSpec, now: Now) -> Result<LoadOutcome> {
        self.load_sku_for(spec, now, None).await
    }

    /// [`Inventory::load_sku`] on behalf of HTTP request `request`, which the `sku.loaded`
    /// events name.
    ///
    /// # Errors
    /// As [`Inventory::load_sku`].
    pub async fn load_sku_for(
        &self,
        spec: &SkuSpec,
        now: Now,
        request: Option<&RequestId>,
    ) -> Result<LoadOutcome> {
        spec.validate()?;
        let fingerprint = spec.fingerprint();
        let by_partition = spec.shares_by_partition(&self.schema);
        let mut outcome = LoadOutcome::Unchanged;
        for p in self.schema.partitions() {
            let shares = by_partition
                .get(&p)
                .map(|v| {
                    v.iter()
                        .map(|s| format!("{}:{}", s.segment, s.initial))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let load = Load {
                spec,
                partition: p,
                fingerprint: &fingerprint,
                shares: &shares,
                now,
                request,
            };
            match self.call(&load).await {
                Ok(LoadOutcome::Loaded) => outcome = LoadOutcome::Loaded,
                Ok(LoadOutcome::Unchanged) => {}
                // The answer (a deployment error's detail) or the log (any other failure)
                // says where the load stopped and how to finish it.
                Err(Rejection::Unavailable(why)) => {
                    return Err(Rejection::Unavailable(self.stopped_at(p, &why)));
                }
                Err(Rejection::Unreachable(why)) => {
                    return Err(Rejection::Unreachable(self.stopped_at(p, &why)));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(outcome)
    }

    fn stopped_at(&self, p: Partition, why: &str) -> String {
        format!(
            "{why}; the load stopped at partition {p} of {}: send the same load again to finish it",
            self.schema.partition_count()
        )
    }

    /// A SKU's terms and every segment's levels.
    ///
    /// # Errors
    /// [`Rejection::UnknownSku`], or unavailable.
    pub async fn stock(&self, sku: &SkuId) -> Result<StockLevels> {
        let home = self.schema.home_of_sku(sku);
        let Some((terms, mut segments)) = self
            .call(&Stock {
                sku,
                partition: home,
            })
            .await?
        else {
            return Err(Rejection::UnknownSku);
        };
        for p in self
            .schema
            .sku_partitions(sku, terms.segments)
            .into_iter()
            .skip(1)
        {
            // Every partition of a loaded SKU holds its terms.
            let Some((_, levels)) = self.call(&Stock { sku, partition: p }).await? else {
                return Err(functions::unexpected_code("unknown_sku"));
            };
            segments.extend(levels);
        }
        segments.sort_by_key(|s| s.segment);
        Ok(StockLevels { terms, segments })
    }

    /// Units free to reserve in one partition of the SKU (one read-only call): how a node
    /// checks, cheaply, that a partition it saw empty still is.
    ///
    /// # Errors
    /// [`Rejection::UnknownSku`], or unavailable.
    pub async fn available_in(&self, sku: &SkuId, p: Partition) -> Result<u64> {
        match self.call(&Stock { sku, partition: p }).await? {
            Some((_, levels)) => Ok(levels.iter().map(|s| s.available).sum()),
            None => Err(Rejection::UnknownSku),
        }
    }

    /// Reservations in `partition` whose expiry has passed, oldest first.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn due_reservations(
        &self,
        partition: Partition,
        now: Now,
        limit: usize,
    ) -> Result<Vec<ReservationId>> {
        self.call(&Due {
            timers: KeySchema::expiries,
            partition,
            now,
            limit,
            parse: ReservationId::parse,
        })
        .await
    }

    /// Orders in `partition` whose payment deadline has passed, oldest first.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn due_orders(
        &self,
        partition: Partition,
        now: Now,
        limit: usize,
    ) -> Result<Vec<OrderId>> {
        self.call(&Due {
            timers: KeySchema::deadlines,
            partition,
            now,
            limit,
            parse: OrderId::parse,
        })
        .await
    }
}
