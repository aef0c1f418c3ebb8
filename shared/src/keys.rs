//! The key schema: which Redis keys hold what, and which partition (hash tag) they live in.
//!
//! Every key starts with its partition's hash tag, `{fc:p07}`, so everything one atomic call
//! touches is in one Redis Cluster slot. A SKU's segment `i` lives in partition
//! `(home(sku) + i) mod P`; a buyer's idempotency records and purchase counters live in the
//! buyer's home partition.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{BuyerId, HoldToken, IdempotencyKey, OrderId, PspEventId, ReservationId, SkuId};

/// One partition: a Redis Cluster hash tag and the stream of events decided in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition(u16);

impl Partition {
    /// Partition number `index`.
    pub const fn new(index: u16) -> Self {
        Self(index)
    }

    /// The partition's number.
    pub const fn index(self) -> u16 {
        self.0
    }

    /// The hash tag every key of this partition starts with, e.g. `{fc:p07}`.
    pub fn tag(self) -> String {
        format!("{{fc:p{:02}}}", self.0)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{:02}", self.0)
    }
}

/// Partition `p`'s dead-letter stream (see [`KeySchema::dead_letters`]); a free function for
/// settlement, which names it without a schema.
pub fn dead_letters(p: Partition) -> String {
    format!("{}:dlq", p.tag())
}

/// Why a key schema could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partitions must be between 1 and {max}, got {got}", max = KeySchema::MAX_PARTITIONS)]
pub struct PartitionCountError {
    got: u32,
}

/// The partition count and the key names derived from it. Every process that talks to one
/// Redis deployment must use the same partition count; it is stored with each SKU and
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchema {
    partitions: u16,
}

impl Default for KeySchema {
    fn default() -> Self {
        Self {
            partitions: Self::DEFAULT_PARTITIONS,
        }
    }
}

/// A stable 64-bit hash of `parts` (SHA-256 prefix): the same on every platform and in wasm.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let digest = crate::digest(parts);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl KeySchema {
    /// 16 partitions: enough to spread over a few cluster masters, few enough that a
    /// per-partition sweep (stock read, timers) stays cheap.
    pub const DEFAULT_PARTITIONS: u16 = 16;
    /// Upper bound on partitions.
    pub const MAX_PARTITIONS: u16 = 1024;

    /// A schema with `partitions` partitions.
    ///
    /// # Errors
    /// When `partitions` is 0 or above [`KeySchema::MAX_PARTITIONS`].
    pub fn new(partitions: u32) -> Result<Self, PartitionCountError> {
        match u16::try_from(partitions) {
            Ok(p) if (1..=Self::MAX_PARTITIONS).contains(&p) => Ok(Self { partitions: p }),
            _ => Err(PartitionCountError { got: partitions }),
        }
    }

    /// The partition count.
    pub fn partition_count(&self) -> u16 {
        self.partitions
    }

    /// Every partition, in order.
    pub fn partitions(&self) -> impl Iterator<Item = Partition> + use<> {
        (0..self.partitions).map(Partition)
    }

    /// Whether `p` belongs to this schema.
    pub fn contains(&self, p: Partition) -> bool {
        p.0 < self.partitions
    }

    /// The SKU's home partition: where segment 0 lives.
    pub fn home_of_sku(&self, sku: &SkuId) -> Partition {
        Partition(
            (stable_hash(&[b"sku", sku.as_str().as_bytes()]) % u64::from(self.partitions)) as u16,
        )
    }

    /// The buyer's home partition: idempotency records and purchase counters.
    pub fn home_of_buyer(&self, buyer: &BuyerId) -> Partition {
        Partition(
            (stable_hash(&[b"buyer", buyer.as_str().as_bytes()]) % u64::from(self.partitions))
                as u16,
        )
    }

    /// The partition of the SKU's segment `segment`.
    pub fn segment_partition(&self, sku: &SkuId, segment: u16) -> Partition {
        self.segment_partition_from(self.home_of_sku(sku), segment)
    }

    /// [`Self::segment_partition`] from the SKU's home, already hashed: the hash is a SHA-256,
    /// and the hot path asks for every segment of a SKU on each deduct.
    fn segment_partition_from(&self, home: Partition, segment: u16) -> Partition {
        Partition(((u32::from(home.0) + u32::from(segment)) % u32::from(self.partitions)) as u16)
    }

    /// The lowest segment number partition `p` can hold: the one segment it holds, if any,
    /// when the SKU has no more segments than partitions (the default). The inverse of
    /// [`Self::segment_partition`] for such SKUs.
    ///
    /// `sku_home` is the SKU's home, [`Self::home_of_sku`]: the hot path hashes it once a
    /// request.
    pub fn first_segment_in(&self, sku_home: Partition, p: Partition) -> u16 {
        let home = u32::from(sku_home.0);
        let parts = u32::from(self.partitions);
        ((u32::from(p.0) + parts - home) % parts) as u16
    }

    /// The distinct partitions holding the SKU's `segments` segments, in segment order.
    pub fn sku_partitions(&self, sku: &SkuId, segments: u16) -> Vec<Partition> {
        self.sku_partitions_from(self.home_of_sku(sku), segments)
    }

    /// [`Self::sku_partitions`] from the SKU's home, already hashed.
    pub fn sku_partitions_from(&self, sku_home: Partition, segments: u16) -> Vec<Partition> {
        let count = segments.min(self.partitions);
        (0..count)
            .map(|s| self.segment_partition_from(sku_home, s))
            .collect()
    }

    /// The order in which a reserve that found its first partition short visits the others:
    /// the SKU's partitions after `first`, wrapping, without `first`. Deterministic, so a
    /// resumed reserve visits them in the same order. `sku_home` is [`Self::home_of_sku`].
    pub fn fallback_order(
        &self,
        sku_home: Partition,
        segments: u16,
        first: Partition,
    ) -> Vec<Partition> {
        let all = self.sku_partitions_from(sku_home, segments);
        let start = all.iter().position(|p| *p == first).map_or(0, |i| i + 1);
        all.iter()
            .cycle()
            .skip(start)
            .take(all.len())
            .copied()
            .filter(|p| *p != first)
            .collect()
    }

    /// The SKU's configuration copy and its segment levels in partition `p` (one hash).
    pub fn sku(&self, p: Partition, sku: &SkuId) -> String {
        format!("{}:sku:{}", p.tag(), sku)
    }

    /// A reservation record. In the buyer's home partition it is also the record of the
    /// request that made it (idempotency), whatever that request decided.
    pub fn reservation(&self, id: &ReservationId) -> String {
        format!("{}:rsv:{}", id.partition().tag(), id.token().as_str())
    }

    /// Marks that a reserve with this token found partition `p` short, so a resumed reserve
    /// never takes stock there later.
    pub fn skip(&self, p: Partition, token: &HoldToken) -> String {
        format!("{}:skip:{}", p.tag(), token.as_str())
    }

    /// An order record.
    pub fn order(&self, id: &OrderId) -> String {
        format!("{}:ord:{}", id.partition().tag(), id.token().as_str())
    }

    /// A buyer's idempotency record for one operation, in partition `p`.
    pub fn idempotency(
        &self,
        p: Partition,
        op: &str,
        buyer: &BuyerId,
        key: &IdempotencyKey,
    ) -> String {
        format!("{}:idem:{op}:{}:{}", p.tag(), buyer, key)
    }

    /// Where an order request's idempotency key is bound: the buyer's home partition, one
    /// place for the key whatever partition the reservation lives in. The order's own call
    /// also keeps the key in the reservation's partition ([`Self::idempotency`]); when the two
    /// are one partition, they are one record.
    pub fn order_claim(&self, buyer: &BuyerId, key: &IdempotencyKey) -> String {
        self.idempotency(self.home_of_buyer(buyer), "ord", buyer, key)
    }

    /// The partition a payment provider's event id is bound in, whatever order it names.
    pub fn home_of_psp_event(&self, event: &PspEventId) -> Partition {
        Partition(
            (stable_hash(&[b"psp", event.as_str().as_bytes()]) % u64::from(self.partitions)) as u16,
        )
    }

    /// Where a payment provider's event id is bound to the payment it first carried (order,
    /// amount, currency), so the same id for another order is refused in any partition.
    pub fn psp_claim(&self, event: &PspEventId) -> String {
        format!("{}:idem:psp:{}", self.home_of_psp_event(event).tag(), event)
    }

    /// A buyer's purchase counter for a SKU, in the buyer's home partition `home`
    /// ([`Self::home_of_buyer`], which the caller has hashed already).
    pub fn purchase_count(&self, home: Partition, sku: &SkuId, buyer: &BuyerId) -> String {
        debug_assert_eq!(home, self.home_of_buyer(buyer), "not {buyer}'s home");
        format!("{}:lim:{}:{}", home.tag(), sku, buyer)
    }

    /// A payment provider event's dedupe record, in the order's partition.
    pub fn psp_event(&self, p: Partition, event: &PspEventId) -> String {
        format!("{}:psp:{}", p.tag(), event)
    }

    /// The partition's event stream: the outbox, appended in the same call as each decision.
    pub fn events(&self, p: Partition) -> String {
        format!("{}:events", p.tag())
    }

    /// The partition's dead-letter stream: events settlement could not apply, kept for an
    /// operator (`flashcart dlq`).
    pub fn dead_letters(&self, p: Partition) -> String {
        dead_letters(p)
    }

    /// Reservations by expiry time (sorted set), for the settlement timers.
    pub fn expiries(&self, p: Partition) -> String {
        format!("{}:expiries", p.tag())
    }

    /// Orders by payment deadline (sorted set), for the settlement timers.
    pub fn deadlines(&self, p: Partition) -> String {
        format!("{}:deadlines", p.tag())
    }

    /// The partition's ledger guard: present once settlement settles the partition into a
    /// ledger, kept for good. While it exists, a redis-server process that has not been
    /// checked against the ledger since it started refuses every write to the partition
    /// (fenced), see `checked` in the function library.
    pub fn guard(&self, p: Partition) -> String {
        format!("{}:ledger", p.tag())
    }

    /// The field of a reservation or order record (a hash) that holds its state.
    pub const STATE_FIELD: &str = "state";

    /// The fields of a partition's SKU hash ([`Self::sku`]) that hold segment `segment`'s
    /// levels, as the function library writes them: available, reserved, ordered, sold
    /// (`a<seg>`, `r<seg>`, `o<seg>`, `s<seg>`; the initial stock is `i<seg>`).
    pub fn segment_level_fields(segment: u16) -> [String; 4] {
        ["a", "r", "o", "s"].map(|level| format!("{level}{segment}"))
    }

    /// A buyer's token bucket for deducts, in the buyer's home partition `home`
    /// ([`Self::home_of_buyer`]), beside the records a reserve starts with, so the bucket
    /// costs no call of its own.
    pub fn buyer_bucket(&self, home: Partition, buyer: &BuyerId) -> String {
        debug_assert_eq!(home, self.home_of_buyer(buyer), "not {buyer}'s home");
        format!("{}:rate:buyer:{}", home.tag(), buyer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> SkuId {
        SkuId::parse(s).unwrap()
    }

    #[test]
    fn tags_are_hash_tags() {
        assert_eq!(Partition::new(7).tag(), "{fc:p07}");
        assert_eq!(Partition::new(123).tag(), "{fc:p123}");
        let schema = KeySchema::default();
        assert!(
            schema
                .sku(Partition::new(3), &sku("a"))
                .starts_with("{fc:p03}:")
        );
    }

    #[test]
    fn partition_count_bounds() {
        assert!(KeySchema::new(0).is_err());
        assert!(KeySchema::new(1).is_ok());
        assert!(KeySchema::new(1024).is_ok());
        assert!(KeySchema::new(1025).is_err());
    }

    #[test]
    fn segments_spread_over_distinct_partitions() {
        let schema = KeySchema::default();
        let parts = schema.sku_partitions(&sku("drop-1"), 16);
        let mut distinct = parts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 16);
        assert_eq!(parts[0], schema.home_of_sku(&sku("drop-1")));
    }

    #[test]
    fn first_segment_in_inverts_segment_partition() {
        let schema = KeySchema::default();
        let s = sku("drop-1");
        let home = schema.home_of_sku(&s);
        for segment in 0..16 {
            let p = schema.segment_partition(&s, segment);
            assert_eq!(schema.first_segment_in(home, p), segment);
        }
        // With more segments than partitions, partition p also holds first + 16, first + 32…
        let p = schema.segment_partition(&s, 20);
        assert_eq!(schema.first_segment_in(home, p), 4);
    }

    #[test]
    fn fallback_order_visits_every_other_partition_once() {
        let schema = KeySchema::default();
        let s = sku("drop-1");
        let all = schema.sku_partitions(&s, 5);
        let home = schema.home_of_sku(&s);
        let order = schema.fallback_order(home, 5, all[2]);
        assert_eq!(order, vec![all[3], all[4], all[0], all[1]]);
        // A first partition that holds no segment: visit all of them, in segment order.
        let outside = schema.partitions().find(|p| !all.contains(p)).unwrap();
        assert_eq!(schema.fallback_order(home, 5, outside), all);
    }

    #[test]
    fn buyer_keys_live_in_the_home_they_are_given() {
        let schema = KeySchema::default();
        let buyer = BuyerId::parse("b7").unwrap();
        let home = schema.home_of_buyer(&buyer);
        assert!(
            schema
                .purchase_count(home, &sku("drop-1"), &buyer)
                .starts_with(&format!("{}:lim:", home.tag()))
        );
        assert!(
            schema
                .buyer_bucket(home, &buyer)
                .starts_with(&format!("{}:rate:buyer:", home.tag()))
        );
    }

    /// A caller that names another partition as the buyer's home is caught where tests run
    /// (debug builds); the hot path does not hash the buyer again to check.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not b7's home")]
    fn a_buyer_key_in_a_foreign_partition_is_caught() {
        let schema = KeySchema::default();
        let buyer = BuyerId::parse("b7").unwrap();
        let elsewhere = Partition::new((schema.home_of_buyer(&buyer).index() + 1) % 16);
        let _ = schema.purchase_count(elsewhere, &sku("drop-1"), &buyer);
    }

    #[test]
    fn buyers_spread_over_partitions() {
        let schema = KeySchema::default();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            seen.insert(schema.home_of_buyer(&BuyerId::parse(&format!("b{i}")).unwrap()));
        }
        assert_eq!(seen.len(), 16);
    }
}
