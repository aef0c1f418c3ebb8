//! flashcart-edge-cache: the node-local cache in front of Redis, used by stock-check and by
//! deduct's sold-out short-circuit.
//!
//! - Stale-while-revalidate: an entry is fresh for `staleness` (default 250 ms) plus a
//!   per-entry jitter (so a node's entries do not all expire in the same instant), then
//!   stale for up to `max_stale`; past that it is a miss.
//! - A refresh lease: of the requests that find an entry stale, the one that takes the lease
//!   refreshes it from Redis while the others answer from the cache.
//! - Negative caching: a SKU Redis does not know is remembered as unknown for a short time.
//! - A stock map per SKU: which of its partitions Redis last reported empty, and when.
//!   Deducts skip those partitions; once every partition is empty and Redis answered a deduct
//!   "sold out", the SKU is sold out at this node and deducts answer so without Redis. Every `sold_out_ttl` one request (holding a
//!   refresh lease, like the stock entries') re-reads the partition seen empty longest ago
//!   while the others keep answering sold out, so a sold-out SKU costs one read per node per
//!   `sold_out_ttl`, and units that come back (expired reservations) are found within
//!   `(partitions + 1) × sold_out_ttl`.
//!
//! Storage is any [`KvStore`] (Spin key-value at the edge, a map in tests); time comes from a
//! [`Clock`], so the rules are tested with a fake clock.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A key-value store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct KvError(pub String);

/// The node-local store (Spin key-value's `default` store at the edge).
pub trait KvStore {
    /// The value of `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>>;
    /// Sets `key` to `value`.
    fn set(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<(), KvError>>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), KvError>>;
}

/// Where time comes from.
pub trait Clock {
    /// Now, unix ms.
    fn now_ms(&self) -> u64;
}

/// The cache's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an entry is fresh.
    pub staleness_ms: u64,
    /// Up to this much is added to an entry's freshness, spread by key and fetch time.
    pub jitter_ms: u64,
    /// How long past freshness an entry may still be served while one request refreshes.
    pub max_stale_ms: u64,
    /// How long an unknown SKU is remembered.
    pub negative_ttl_ms: u64,
    /// How long a sold-out SKU is answered without any Redis call; also the pace at which a
    /// sold-out SKU's partitions are re-checked, one per period (see [`EdgeCache::plan_deduct`]).
    pub sold_out_ttl_ms: u64,
    /// How long a refresh lease holds.
    pub lease_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            staleness_ms: 250,
            jitter_ms: 50,
            max_stale_ms: 5_000,
            negative_ttl_ms: 1_000,
            sold_out_ttl_ms: 1_000,
            lease_ms: 1_000,
        }
    }
}

/// What the cache knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Fresh: answer from it.
    Fresh {
        /// The value.
        value: T,
        /// Its age, ms (for `Age` / `Cache-Control`).
        age_ms: u64,
    },
    /// Stale. If `refresh`, this request holds the lease and should fetch and [`EdgeCache::put`];
    /// otherwise answer from the value.
    Stale {
        /// The value.
        value: T,
        /// Its age, ms.
        age_ms: u64,
        /// Whether this request should refresh it.
        refresh: bool,
    },
    /// Known not to exist (negative cache).
    Unknown,
    /// Nothing usable: fetch.
    Miss,
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    value: Option<T>,
    fetched_at: u64,
    fresh_until: u64,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    holder: String,
    until: u64,
}

/// Where a SKU's units are, as this node last heard from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StockMap {
    /// The SKU's segment count (0: not known yet).
    segments: u16,
    /// The SKU's partitions (empty: not known yet).
    partitions: Vec<u16>,
    /// Partitions Redis reported with no units left, and when (ms, this node's clock).
    empty: BTreeMap<u16, u64>,
    /// Whether Redis answered a deduct "sold out" since a partition last reported units.
    sold_out: bool,
}

/// What a deduct should do, according to the node's stock map of its SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeductPlan {
    /// Every partition of the SKU was seen empty lately: answer sold out without Redis.
    SoldOut,
    /// As `SoldOut`, but the knowledge is due a check and this request holds the lease: read
    /// `partition` (the one seen empty longest ago) and report it with
    /// [`EdgeCache::probed`]; if it has units after all, reserve with the other fields.
    Probe {
        /// The partition to read.
        partition: u16,
        /// The SKU's segment count.
        segments: u16,
        /// The partitions believed empty (including `partition`).
        empty: Vec<u16>,
    },
    /// Reserve through Redis, skipping the partitions seen empty lately.
    Reserve {
        /// The SKU's segment count, when known.
        segments: Option<u16>,
        /// The partitions believed empty.
        empty: Vec<u16>,
    },
}

/// The edge cache over a store and a clock.
///
/// Besides the store it keeps one thing of its own (shared by its clones): the stock maps it
/// read lately, each believed without reading the store again for [`STOCK_MAP_MEMORY_MS`] —
/// or, for a SKU it found sold out at the node, until the end of the flag's period but no
/// later than `staleness_ms` after it read it (the store read was the sold-out answer's
/// largest cost). What an instance learns itself ([`EdgeCache::observe`]) it remembers at once.
/// What it can miss is bounded by the same staleness the node already accepts for stock
/// answers: another instance's news reaches it within `STOCK_MAP_MEMORY_MS` (10 ms: at most a
/// visit to a partition that instance had just found empty), and an admin reload on this node
/// (whose admin component has its own instances) within `staleness_ms` — other nodes see it
/// only within `sold_out_ttl_ms`. The re-check each period starts from the store, as before.
#[derive(Debug, Clone)]
pub struct EdgeCache<S, C> {
    store: S,
    clock: C,
    config: CacheConfig,
    remembered: Arc<Mutex<BTreeMap<String, Remembered>>>,
}

/// How long an instance believes a stock map it read from the store, when the map does not
/// say the SKU is sold out: short enough that another instance's news costs at most one
/// extra partition visit, long enough that a busy instance reads the store once per burst.
pub const STOCK_MAP_MEMORY_MS: u64 = 10;

/// What a stock map says of a deduct, before any lease is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    /// Go to Redis with this hint.
    Reserve {
        segments: Option<u16>,
        empty: Vec<u16>,
    },
    /// Sold out at the node until the period ends.
    SoldOut { period_ends: u64 },
    /// The period ended: re-check `partition`, if this request gets the lease.
    Recheck {
        partition: u16,
        segments: u16,
        empty: Vec<u16>,
    },
}

/// A stock map as an instance read (or wrote) it, and until when it believes it.
#[derive(Debug, Clone)]
struct Remembered {
    map: StockMap,
    until: u64,
}

fn entry_key(key: &str) -> String {
    format!("fc:cache:{key}")
}
fn lease_key(key: &str) -> String {
    format!("fc:lease:{key}")
}
fn stock_map_key(key: &str) -> String {
    format!("fc:stockmap:{key}")
}
fn stock_map_lease_key(key: &str) -> String {
    format!("fc:stockmap-lease:{key}")
}

/// A spread in `0..=max` from the key and the fetch time (FNV-1a): stable, no randomness
/// source needed inside a component.
fn jitter(key: &str, fetched_at: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(fetched_at.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % (max + 1)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

impl<S: KvStore, C: Clock> EdgeCache<S, C> {
    /// A cache over `store` and `clock`.
    pub fn new(store: S, clock: C, config: CacheConfig) -> Self {
        Self {
            store,
            clock,
            config,
            remembered: Arc::default(),
        }
    }

    /// What the stock map of `key` this cache remembers says at `now`, if it still believes it
    /// (judged under the lock: the map is not copied out).
    fn remembered(&self, key: &str, now: u64) -> Option<Judgement> {
        let mut memory = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        match memory.get(key) {
            Some(r) if now < r.until => Some(self.judge(&r.map, now)),
            Some(_) => {
                memory.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: &str, map: StockMap, until: u64) {
        let mut memory = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        memory.insert(key.to_owned(), Remembered { map, until });
    }

    fn forget(&self, key: &str) {
        let mut memory = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        memory.remove(key);
    }

    /// The rules in force.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Looks `key` up. `holder` names this request for the refresh lease.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn lookup<T: DeserializeOwned>(
        &self,
        key: &str,
        holder: &str,
    ) -> Result<Lookup<T>, KvError> {
        let now = self.clock.now_ms();
        let Some(entry) = self
            .store
            .get(&entry_key(key))
            .await?
            .and_then(|b| decode::<Entry<T>>(&b))
        else {
            return Ok(Lookup::Miss);
        };
        let age_ms = now.saturating_sub(entry.fetched_at);
        let Some(value) = entry.value else {
            return Ok(if now < entry.fresh_until {
                Lookup::Unknown
            } else {
                Lookup::Miss
            });
        };
        if now < entry.fresh_until {
            return Ok(Lookup::Fresh { value, age_ms });
        }
        if now >= entry.fresh_until + self.config.max_stale_ms {
            return Ok(Lookup::Miss);
        }
        let refresh = self.take_lease(&lease_key(key), holder, now).await?;
        Ok(Lookup::Stale {
            value,
            age_ms,
            refresh,
        })
    }

    /// Stores a value just fetched from Redis (and ends the refresh lease).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), KvError> {
        let now = self.clock.now_ms();
        let fresh_until = now + self.config.staleness_ms + jitter(key, now, self.config.jitter_ms);
        self.write(key, Some(value), now, fresh_until).await?;
        self.store.delete(&lease_key(key)).await
    }

    /// Remembers that `key` does not exist.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn put_unknown(&self, key: &str) -> Result<(), KvError> {
        let now = self.clock.now_ms();
        self.write::<()>(key, None, now, now + self.config.negative_ttl_ms)
            .await?;
        self.store.delete(&lease_key(key)).await
    }

    async fn write<T: Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
        now: u64,
        fresh_until: u64,
    ) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(&Entry {
            value,
            fetched_at: now,
            fresh_until,
        })
        .map_err(|e| KvError(e.to_string()))?;
        self.store.set(&entry_key(key), &bytes).await
    }

    /// Forgets `key` (e.g. after an admin load).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn invalidate(&self, key: &str) -> Result<(), KvError> {
        self.forget(key);
        self.store.delete(&entry_key(key)).await?;
        self.store.delete(&stock_map_key(key)).await
    }

    /// The stock map as the store has it (what [`Self::observe`] updates).
    async fn stored_stock_map(&self, key: &str) -> Result<StockMap, KvError> {
        Ok(self
            .store
            .get(&stock_map_key(key))
            .await?
            .and_then(|b| decode::<StockMap>(&b))
            .unwrap_or_default())
    }

    /// How long an observation that a partition is empty is believed: one re-check per
    /// `sold_out_ttl` visits every partition within `partitions × sold_out_ttl`.
    fn trust_ms(&self, map: &StockMap) -> u64 {
        self.config.sold_out_ttl_ms * (map.partitions.len() as u64 + 1)
    }

    /// What a deduct of `key` should do (see [`DeductPlan`]). `holder` names this request for
    /// the re-check lease.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn plan_deduct(&self, key: &str, holder: &str) -> Result<DeductPlan, KvError> {
        let now = self.clock.now_ms();
        let judgement = match self.remembered(key, now) {
            Some(judgement) => judgement,
            None => {
                let map = self.stored_stock_map(key).await?;
                let judgement = self.judge(&map, now);
                // A sell-out is believed longer than other news, counted from this read.
                let until = match judgement {
                    Judgement::SoldOut { period_ends } => {
                        period_ends.min(now.saturating_add(self.config.staleness_ms))
                    }
                    _ => now.saturating_add(STOCK_MAP_MEMORY_MS),
                };
                self.remember(key, map, until);
                judgement
            }
        };
        match judgement {
            Judgement::Reserve { segments, empty } => Ok(DeductPlan::Reserve { segments, empty }),
            Judgement::SoldOut { .. } => Ok(DeductPlan::SoldOut),
            Judgement::Recheck {
                partition,
                segments,
                empty,
            } => {
                if self
                    .take_lease(&stock_map_lease_key(key), holder, now)
                    .await?
                {
                    Ok(DeductPlan::Probe {
                        partition,
                        segments,
                        empty,
                    })
                } else {
                    Ok(DeductPlan::SoldOut)
                }
            }
        }
    }

    /// What `map` says of a deduct at `now`, before any lease: a pure reading of it.
    fn judge(&self, map: &StockMap, now: u64) -> Judgement {
        let trust = self.trust_ms(map);
        let believed: Vec<(u16, u64)> = map
            .empty
            .iter()
            .filter(|&(_, &at)| now < at.saturating_add(trust))
            .map(|(&p, &at)| (p, at))
            .collect();
        let empty: Vec<u16> = believed.iter().map(|&(p, _)| p).collect();
        let segments = (map.segments > 0).then_some(map.segments);
        let everywhere = map.sold_out
            && !map.partitions.is_empty()
            && map.partitions.iter().all(|p| empty.contains(p));
        // Sold out: every partition is believed empty, so `believed` has entries.
        let (Some(oldest), Some(last), true) = (
            believed.iter().min_by_key(|&&(_, at)| at).map(|&(p, _)| p),
            believed.iter().map(|&(_, at)| at).max(),
            everywhere,
        ) else {
            return Judgement::Reserve { segments, empty };
        };
        let period_ends = last.saturating_add(self.config.sold_out_ttl_ms);
        if now < period_ends {
            return Judgement::SoldOut { period_ends };
        }
        Judgement::Recheck {
            partition: oldest,
            segments: map.segments,
            empty,
        }
    }

    /// Records what Redis just said about `key`'s partitions: `seen` lists partitions with the
    /// units left there; `sold_out`, whether it answered the deduct "sold out". `partitions`
    /// (with `segments`) lists the SKU's partitions when the caller knows them. Writes only
    /// when something changed.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn observe(
        &self,
        key: &str,
        segments: Option<u16>,
        partitions: &[u16],
        seen: &[(u16, u64)],
        sold_out: bool,
    ) -> Result<(), KvError> {
        let now = self.clock.now_ms();
        let mut map = self.stored_stock_map(key).await?;
        let before = map.clone();
        if let Some(segments) = segments
            && (segments != map.segments || partitions != map.partitions.as_slice())
        {
            map.segments = segments;
            map.partitions = partitions.to_vec();
            map.empty.retain(|p, _| partitions.contains(p));
        }
        for &(p, left) in seen {
            if !map.partitions.contains(&p) {
                continue;
            }
            if left == 0 {
                map.empty.insert(p, now);
            } else {
                map.empty.remove(&p);
                map.sold_out = false;
            }
        }
        map.sold_out |= sold_out;
        if map == before {
            self.remember(key, map, now.saturating_add(STOCK_MAP_MEMORY_MS));
            return Ok(());
        }
        let bytes = serde_json::to_vec(&map).map_err(|e| KvError(e.to_string()))?;
        self.store.set(&stock_map_key(key), &bytes).await?;
        self.remember(key, map, now.saturating_add(STOCK_MAP_MEMORY_MS));
        Ok(())
    }

    /// Records the re-check a [`DeductPlan::Probe`] asked for, and ends the lease.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn probed(&self, key: &str, partition: u16, left: u64) -> Result<(), KvError> {
        self.observe(key, None, &[], &[(partition, left)], false)
            .await?;
        self.store.delete(&stock_map_lease_key(key)).await
    }

    /// Takes the refresh lease unless another holder has it. The store has no compare-and-set,
    /// so this writes then reads back: two requests racing in the same instant may both refresh
    /// (harmless: one extra Redis read), but a held lease is never taken over before it ends.
    async fn take_lease(&self, lk: &str, holder: &str, now: u64) -> Result<bool, KvError> {
        if let Some(current) = self.store.get(lk).await?.and_then(|b| decode::<Lease>(&b))
            && current.until > now
        {
            return Ok(current.holder == holder);
        }
        let lease = Lease {
            holder: holder.to_owned(),
            until: now + self.config.lease_ms,
        };
        let bytes = serde_json::to_vec(&lease).map_err(|e| KvError(e.to_string()))?;
        self.store.set(lk, &bytes).await?;
        let back = self.store.get(lk).await?.and_then(|b| decode::<Lease>(&b));
        Ok(back.is_some_and(|l| l.holder == holder))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use futures::executor::block_on;

    use super::*;

    #[derive(Default)]
    /// The store, and how many reads it answered.
    struct Memory(RefCell<HashMap<String, Vec<u8>>>, Cell<usize>);

    impl KvStore for &Memory {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            self.1.set(self.1.get() + 1);
            Ok(self.0.borrow().get(key).cloned())
        }
        async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), KvError> {
            self.0.borrow_mut().remove(key);
            Ok(())
        }
    }

    struct FakeClock(Cell<u64>);

    impl Clock for &FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }

    const CONFIG: CacheConfig = CacheConfig {
        staleness_ms: 250,
        jitter_ms: 0,
        max_stale_ms: 1_000,
        negative_ttl_ms: 500,
        sold_out_ttl_ms: 700,
        lease_ms: 300,
    };

    fn setup() -> (Memory, FakeClock) {
        (Memory::default(), FakeClock(Cell::new(10_000)))
    }

    #[test]
    fn fresh_then_stale_then_miss() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        assert_eq!(block_on(cache.lookup::<u32>("a", "r1")), Ok(Lookup::Miss));
        block_on(cache.put("a", &7u32)).unwrap();
        clock.0.set(10_249);
        assert_eq!(
            block_on(cache.lookup("a", "r1")),
            Ok(Lookup::Fresh {
                value: 7u32,
                age_ms: 249
            })
        );
        clock.0.set(10_250);
        assert_eq!(
            block_on(cache.lookup("a", "r1")),
            Ok(Lookup::Stale {
                value: 7u32,
                age_ms: 250,
                refresh: true
            })
        );
        clock.0.set(10_250 + 1_000);
        assert_eq!(block_on(cache.lookup::<u32>("a", "r1")), Ok(Lookup::Miss));
    }

    #[test]
    fn one_request_refreshes_while_others_serve_stale() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        block_on(cache.put("a", &1u32)).unwrap();
        clock.0.set(10_300);
        let first = block_on(cache.lookup::<u32>("a", "r1")).unwrap();
        let second = block_on(cache.lookup::<u32>("a", "r2")).unwrap();
        let again = block_on(cache.lookup::<u32>("a", "r1")).unwrap();
        assert_eq!(
            first,
            Lookup::Stale {
                value: 1,
                age_ms: 300,
                refresh: true
            }
        );
        assert_eq!(
            second,
            Lookup::Stale {
                value: 1,
                age_ms: 300,
                refresh: false
            }
        );
        assert_eq!(
            again,
            Lookup::Stale {
                value: 1,
                age_ms: 300,
                refresh: true
            },
            "the holder keeps it"
        );
        // The lease ends: a stuck refresher does not block refreshes for ever.
        clock.0.set(10_300 + 300);
        assert!(matches!(
            block_on(cache.lookup::<u32>("a", "r2")).unwrap(),
            Lookup::Stale { refresh: true, .. }
        ));
        // A put ends the lease and makes the entry fresh.
        block_on(cache.put("a", &2u32)).unwrap();
        assert_eq!(
            block_on(cache.lookup("a", "r3")),
            Ok(Lookup::Fresh {
                value: 2u32,
                age_ms: 0
            })
        );
    }

    #[test]
    fn unknown_skus_are_cached_briefly() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        block_on(cache.put_unknown("ghost")).unwrap();
        assert_eq!(
            block_on(cache.lookup::<u32>("ghost", "r")),
            Ok(Lookup::Unknown)
        );
        clock.0.set(10_500);
        assert_eq!(
            block_on(cache.lookup::<u32>("ghost", "r")),
            Ok(Lookup::Miss)
        );
    }

    /// A SKU of 3 segments in partitions 4, 5 and 6.
    const PARTS: [u16; 3] = [4, 5, 6];

    fn sold_out(cache: &EdgeCache<&Memory, &FakeClock>) {
        let seen: Vec<(u16, u64)> = PARTS.iter().map(|&p| (p, 0)).collect();
        block_on(cache.observe("a", Some(3), &PARTS, &seen, true)).unwrap();
    }

    #[test]
    fn empty_partitions_are_skipped_while_believed() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: None,
                empty: vec![]
            })
        );
        block_on(cache.observe("a", Some(3), &PARTS, &[(4, 0), (5, 2), (9, 0)], false)).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![4]
            }),
            "partition 9 is not the SKU's"
        );
        // Units back in 4: no longer skipped.
        clock.0.set(10_100);
        block_on(cache.observe("a", None, &[], &[(4, 1), (6, 0)], false)).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![6]
            })
        );
        // An observation is believed for (partitions + 1) × sold_out_ttl = 2 800 ms.
        clock.0.set(10_100 + 2_799);
        assert!(matches!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve { empty, .. }) if empty == vec![6]
        ));
        clock.0.set(10_100 + 2_800);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![]
            })
        );
    }

    #[test]
    fn empty_everywhere_is_sold_out_only_once_redis_said_so() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        let seen: Vec<(u16, u64)> = PARTS.iter().map(|&p| (p, 0)).collect();
        // The last unit was just taken: a deduct still goes to Redis (which answers sold out
        // from the buyer's home partition alone, given these hints).
        block_on(cache.observe("a", Some(3), &PARTS, &seen, false)).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: PARTS.to_vec()
            })
        );
        block_on(cache.observe("a", None, &[], &[], true)).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::SoldOut)
        );
    }

    #[test]
    fn a_sold_out_sku_is_answered_here_and_rechecked_by_one_request_per_period() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::SoldOut)
        );
        clock.0.set(10_699);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::SoldOut)
        );
        // Due a check: the first request takes the lease, the others still answer sold out.
        clock.0.set(10_700);
        let probe = block_on(cache.plan_deduct("a", "r3")).unwrap();
        let DeductPlan::Probe {
            partition,
            segments: 3,
            ref empty,
        } = probe
        else {
            panic!("expected a probe: {probe:?}");
        };
        assert_eq!(empty, &PARTS.to_vec());
        assert_eq!(
            block_on(cache.plan_deduct("a", "r4")),
            Ok(DeductPlan::SoldOut)
        );
        assert_eq!(
            block_on(cache.plan_deduct("a", "r5")),
            Ok(DeductPlan::SoldOut)
        );
        // Still empty: sold out again for a period, and the next check looks elsewhere.
        block_on(cache.probed("a", partition, 0)).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r6")),
            Ok(DeductPlan::SoldOut)
        );
        clock.0.set(10_700 + 700);
        let next = block_on(cache.plan_deduct("a", "r7")).unwrap();
        assert!(
            matches!(next, DeductPlan::Probe { partition: p, .. } if p != partition),
            "{next:?}"
        );
    }

    #[test]
    fn rechecks_visit_every_partition_and_keep_the_belief_alive() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        let mut checked = std::collections::BTreeSet::new();
        for period in 1..=12u64 {
            clock.0.set(10_000 + period * 700);
            match block_on(cache.plan_deduct("a", &format!("r{period}"))).unwrap() {
                DeductPlan::Probe { partition, .. } => {
                    checked.insert(partition);
                    block_on(cache.probed("a", partition, 0)).unwrap();
                }
                other => panic!("period {period}: {other:?}"),
            }
        }
        assert_eq!(checked.into_iter().collect::<Vec<_>>(), PARTS.to_vec());
    }

    #[test]
    fn units_found_by_a_recheck_end_the_sell_out() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        clock.0.set(10_700);
        let Ok(DeductPlan::Probe { partition, .. }) = block_on(cache.plan_deduct("a", "r1")) else {
            panic!("expected a probe");
        };
        block_on(cache.probed("a", partition, 2)).unwrap();
        let expected: Vec<u16> = PARTS.iter().copied().filter(|&p| p != partition).collect();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: expected
            })
        );
    }

    #[test]
    fn a_stuck_recheck_hands_over_when_its_lease_ends() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        clock.0.set(10_700);
        assert!(matches!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Probe { .. })
        ));
        clock.0.set(10_700 + 299);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::SoldOut)
        );
        clock.0.set(10_700 + 300);
        assert!(matches!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::Probe { .. })
        ));
    }

    #[test]
    fn a_remembered_sell_out_reads_nothing_until_it_must_look_again() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        let plan = |at: u64| {
            clock.0.set(at);
            block_on(cache.plan_deduct("a", "r"))
        };
        // What the instance wrote itself, it believes for STOCK_MAP_MEMORY_MS without a read.
        sold_out(&cache);
        let reads = store.1.get();
        assert_eq!(plan(10_000), Ok(DeductPlan::SoldOut));
        assert_eq!(store.1.get(), reads);
        // Then it reads the store, and believes the sell-out for the staleness bound (250 ms,
        // shorter than the 700 ms period), counted from that read.
        assert_eq!(plan(10_010), Ok(DeductPlan::SoldOut));
        assert_eq!(store.1.get(), reads + 1);
        for at in [10_100, 10_259] {
            assert_eq!(plan(at), Ok(DeductPlan::SoldOut));
        }
        assert_eq!(store.1.get(), reads + 1);
        assert_eq!(plan(10_260), Ok(DeductPlan::SoldOut));
        assert_eq!(store.1.get(), reads + 2);
        assert_eq!(plan(10_509), Ok(DeductPlan::SoldOut));
        assert_eq!(store.1.get(), reads + 2);
        // Never past the period's end (10 700), though 10 510 + 250 is later.
        assert_eq!(plan(10_510), Ok(DeductPlan::SoldOut));
        assert_eq!(plan(10_699), Ok(DeductPlan::SoldOut));
        assert_eq!(store.1.get(), reads + 3);
        // At the period's end the re-check starts from the store, as without the memory.
        assert!(matches!(plan(10_700), Ok(DeductPlan::Probe { .. })));
    }

    #[test]
    fn another_instances_news_is_read_within_the_memory() {
        let (store, clock) = setup();
        let mine = EdgeCache::new(&store, &clock, CONFIG);
        let other = EdgeCache::new(&store, &clock, CONFIG);
        let reserve =
            |cache: &EdgeCache<&Memory, &FakeClock>| block_on(cache.plan_deduct("a", "r"));
        block_on(mine.observe("a", Some(3), &PARTS, &[], false)).unwrap();
        assert_eq!(
            reserve(&mine),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![]
            })
        );
        // Another instance finds a partition empty; this one learns it within 10 ms.
        block_on(other.observe("a", None, &[], &[(PARTS[1], 0)], false)).unwrap();
        clock.0.set(10_009);
        assert_eq!(
            reserve(&mine),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![]
            })
        );
        clock.0.set(10_010);
        assert_eq!(
            reserve(&mine),
            Ok(DeductPlan::Reserve {
                segments: Some(3),
                empty: vec![PARTS[1]]
            })
        );
    }

    #[test]
    fn units_seen_or_a_reload_end_a_remembered_sell_out() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::SoldOut)
        );
        // A reserve of this instance saw units in a partition: the next deduct goes to Redis.
        block_on(cache.observe("a", None, &[], &[(PARTS[0], 3)], false)).unwrap();
        assert!(matches!(
            block_on(cache.plan_deduct("a", "r2")),
            Ok(DeductPlan::Reserve { .. })
        ));
        sold_out(&cache);
        assert_eq!(
            block_on(cache.plan_deduct("a", "r3")),
            Ok(DeductPlan::SoldOut)
        );
        block_on(cache.invalidate("a")).unwrap();
        assert!(matches!(
            block_on(cache.plan_deduct("a", "r4")),
            Ok(DeductPlan::Reserve { .. })
        ));
    }

    #[test]
    fn invalidate_forgets_the_stock_map() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        sold_out(&cache);
        block_on(cache.invalidate("a")).unwrap();
        assert_eq!(
            block_on(cache.plan_deduct("a", "r1")),
            Ok(DeductPlan::Reserve {
                segments: None,
                empty: vec![]
            })
        );
    }

    #[test]
    fn jitter_spreads_expiry_within_bounds() {
        let (store, clock) = setup();
        let config = CacheConfig {
            jitter_ms: 100,
            ..CONFIG
        };
        let cache = EdgeCache::new(&store, &clock, config);
        let mut freshness = std::collections::BTreeSet::new();
        for i in 0..50 {
            let key = format!("k{i}");
            block_on(cache.put(&key, &1u32)).unwrap();
            let entry: Entry<u32> = decode(&store.0.borrow()[&entry_key(&key)]).unwrap();
            let extra = entry.fresh_until - 10_000 - 250;
            assert!(extra <= 100);
            freshness.insert(extra);
        }
        assert!(freshness.len() > 10, "jitter should spread: {freshness:?}");
    }
}
