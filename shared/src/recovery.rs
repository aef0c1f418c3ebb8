//! Recovery after Redis went back in time (a power cut that lost the AOF's last second, a
//! failover to a replica that had not caught up): the calls settlement makes to fence, check
//! and restore a partition. The rules live beside `checked` in the function library:
//!
//! - a partition settlement settles carries a *guard* key ([`KeySchema::guard`]);
//! - a redis-server process refuses every write to a guarded partition (`fenced`, surfaced as
//!   [`Rejection::Fenced`]) until [`Inventory::verify`] found its stream at or above the
//!   ledger's highest applied id — the check is remembered by the process, not in the data
//!   set, so a new process (a restart, a promoted replica) starts fenced;
//! - when the stream is behind, settlement writes what the ledger knows with the `restore_*`
//!   calls (each idempotent, each refused unless the partition is fenced), moves the stream's
//!   id past the ledger's ([`Inventory::restore_stream`]), and verifies again.

use crate::exec::RedisExecutor;
use crate::functions::recovery::{
    FenceState, Guard, RestoreCount, RestoreDecision, RestoreOrder, RestorePayment,
    RestoreReservation, RestoreSku, RestoreStream, Verify,
};
use crate::ids::{BuyerId, OrderId, PspEventId, ReservationId, SkuId};
use crate::inventory::{Inventory, PaymentOutcome, Result, SegmentLevel, SkuTerms};
use crate::keys::Partition;
use crate::order::OrderState;

/// What [`Inventory::guard`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// The guard was set now.
    New,
    /// The partition was guarded already.
    Existing,
}

/// What [`Inventory::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The stream is at or above the ledger: the fence is lifted now.
    Lifted,
    /// This process had checked (or never fenced) the partition already.
    Open,
    /// The stream is below the ledger's highest applied id (or gone): Redis lost writes the
    /// ledger has; the partition stays fenced until it is restored.
    Behind {
        /// The stream's last generated id, `None` when the stream is gone.
        last: Option<String>,
    },
}

/// What a restore call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Written.
    Written,
    /// Refused, nothing written: the partition is not fenced (deciding goes on there, so the
    /// ledger's picture could be older than Redis's).
    NotFenced,
}

/// A reservation's state as the function library names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Holding its units (the ledger's `held`).
    Active,
    /// Became an order.
    Ordered,
    /// Released when its time ran out.
    Expired,
    /// Released by the buyer.
    Cancelled,
}

impl ReservationState {
    /// Every state.
    pub const ALL: [ReservationState; 4] =
        [Self::Active, Self::Ordered, Self::Expired, Self::Cancelled];

    /// Parses the library's name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// The library's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ordered => "ordered",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One partition's copy of a SKU: terms and the segments living there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuImage {
    /// The SKU.
    pub sku: SkuId,
    /// The fingerprint of the terms as loaded (what makes a second load `unchanged`).
    pub fingerprint: String,
    /// The terms.
    pub terms: SkuTerms,
    /// The segments in this partition with their levels.
    pub segments: Vec<SegmentLevel>,
}

/// A reservation record as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationImage {
    /// Its id (names its partition).
    pub id: ReservationId,
    /// Its state.
    pub state: ReservationState,
    /// The segment its units came from.
    pub segment: u16,
    /// Units.
    pub quantity: u64,
    /// When it expires, unix ms.
    pub expires_at: u64,
    /// The buyer.
    pub buyer: BuyerId,
    /// How long the record still lives (released records expire); `None`: kept.
    pub keep_ms: Option<u64>,
}

/// An order record as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderImage {
    /// Its id (names its partition).
    pub id: OrderId,
    /// The reservation it was made from.
    pub reservation: ReservationId,
    /// The segment its units came from.
    pub segment: u16,
    /// Units.
    pub quantity: u64,
    /// The buyer.
    pub buyer: BuyerId,
    /// Amount due, minor units.
    pub amount: u64,
    /// Currency.
    pub currency: String,
    /// Its state.
    pub state: OrderState,
    /// Payment deadline, unix ms.
    pub deadline: u64,
    /// Created, unix ms.
    pub created_at: u64,
    /// The payment provider event that paid it, and when.
    pub paid: Option<(String, u64)>,
    /// When it was cancelled.
    pub cancelled_at: Option<u64>,
}

impl<E: RedisExecutor> Inventory<E> {
    /// Marks partition `p` as settled into a ledger. `ledger_has_events`: the ledger already
    /// holds events of `p`, so a missing guard means Redis lost it, and `p` is fenced now.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn guard(&self, p: Partition, ledger_has_events: bool) -> Result<Guarded> {
        self.call(&Guard {
            partition: p,
            ledger_has_events,
        })
        .await
    }

    /// Lifts `p`'s fence if its stream did not go back in time: its last id is at or above
    /// `highest`, the ledger's highest applied id for `p` (`None`: the ledger has none).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn verify(&self, p: Partition, highest: Option<&str>) -> Result<Verified> {
        self.call(&Verify {
            partition: p,
            highest,
        })
        .await
    }

    /// Whether writes to `p` are fenced now (read-only).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn is_fenced(&self, p: Partition) -> Result<bool> {
        self.call(&FenceState { partition: p }).await
    }

    /// Writes one partition's copy of a SKU (terms and the levels of its segments there).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_sku(&self, p: Partition, image: &SkuImage) -> Result<Restored> {
        self.call(&RestoreSku {
            partition: p,
            image,
        })
        .await
    }

    /// Writes a reservation record (and its expiry timer while active).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_reservation(&self, r: &ReservationImage) -> Result<Restored> {
        self.call(&RestoreReservation { image: r }).await
    }

    /// Writes the decision a reserve took for `found`, a reservation a fallback search found
    /// outside the buyer's home partition, into the request's record at home (kept for
    /// `ttl_ms` more), so a retry with the same key replays it. A record holding a decision
    /// already is left as it is.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_decision(
        &self,
        found: &ReservationImage,
        ttl_ms: u64,
    ) -> Result<Restored> {
        let home = self.schema().home_of_buyer(&found.buyer);
        let record = ReservationId::new(home, found.id.token().clone(), found.id.sku().clone());
        self.call(&RestoreDecision {
            found,
            record: &record,
            ttl_ms,
        })
        .await
    }

    /// Writes an order record (and its payment deadline timer while unpaid).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_order(&self, o: &OrderImage) -> Result<Restored> {
        self.call(&RestoreOrder { image: o }).await
    }

    /// Records a payment provider event's outcome for `order` for `ttl_ms` more, so its
    /// replays answer the same and change nothing. `state`: the order's state, which the
    /// stored answer carries.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_payment(
        &self,
        order: &OrderId,
        event: &PspEventId,
        outcome: &PaymentOutcome,
        state: OrderState,
        ttl_ms: u64,
    ) -> Result<Restored> {
        self.call(&RestorePayment {
            order,
            event,
            outcome,
            state,
            ttl_ms,
        })
        .await
    }

    /// Raises a buyer's purchase counter for `sku` to at least `units` (in the buyer's home
    /// partition, which must be fenced).
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_purchase_count(
        &self,
        sku: &SkuId,
        buyer: &BuyerId,
        units: u64,
    ) -> Result<Restored> {
        self.call(&RestoreCount { sku, buyer, units }).await
    }

    /// Moves `p`'s stream id up to `highest` (`ms-seq`, the ledger's highest applied id), so
    /// new events never take an applied event's identity; creates the stream if it is gone.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn restore_stream(&self, p: Partition, highest: &str) -> Result<Restored> {
        self.call(&RestoreStream {
            partition: p,
            highest,
        })
        .await
    }
}
