//! flashcart-edge-cache: the node-local cache in front of Redis, used by stock-check and by
//! deduct's sold-out short-circuit.
//!
//! - Stale-while-revalidate: an entry is fresh for `staleness` (default 250 ms) plus a
//!   per-entry jitter (so a node's entries do not all expire in the same instant), then
//!   stale for up to `max_stale`; past that it is a miss.
//! - A refresh lease: of the requests that find an entry stale, the one that takes the lease
//!   refreshes it from Redis while the others answer from the cache.
//! - Negative caching: a SKU Redis does not know is remembered as unknown for a short time.
//! - A sold-out flag: once Redis said "sold out", deducts answer it from the cache without a
//!   Redis call until the flag expires (stock can come back when reservations expire).
//!
//! Storage is any [`KvStore`] (Spin key-value at the edge, a map in tests); time comes from a
//! [`Clock`], so the rules are tested with a fake clock.
#![deny(missing_docs)]

use std::future::Future;

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
    /// How long a sold-out flag holds.
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

/// The edge cache over a store and a clock.
#[derive(Debug, Clone)]
pub struct EdgeCache<S, C> {
    store: S,
    clock: C,
    config: CacheConfig,
}

fn entry_key(key: &str) -> String {
    format!("fc:cache:{key}")
}
fn lease_key(key: &str) -> String {
    format!("fc:lease:{key}")
}
fn sold_out_key(key: &str) -> String {
    format!("fc:soldout:{key}")
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
        }
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
        let refresh = self.take_lease(key, holder, now).await?;
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
        self.store.delete(&entry_key(key)).await?;
        self.store.delete(&sold_out_key(key)).await
    }

    /// Whether a sold-out flag for `key` holds now.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn is_sold_out(&self, key: &str) -> Result<bool, KvError> {
        let now = self.clock.now_ms();
        Ok(self
            .store
            .get(&sold_out_key(key))
            .await?
            .and_then(|b| decode::<u64>(&b))
            .is_some_and(|until| now < until))
    }

    /// Raises the sold-out flag for `key` for the configured time.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn mark_sold_out(&self, key: &str) -> Result<(), KvError> {
        let until = self.clock.now_ms() + self.config.sold_out_ttl_ms;
        self.store
            .set(&sold_out_key(key), until.to_string().as_bytes())
            .await
    }

    /// Takes the refresh lease unless another holder has it. The store has no compare-and-set,
    /// so this writes then reads back: two requests racing in the same instant may both refresh
    /// (harmless: one extra Redis read), but a held lease is never taken over before it ends.
    async fn take_lease(&self, key: &str, holder: &str, now: u64) -> Result<bool, KvError> {
        let lk = lease_key(key);
        if let Some(current) = self.store.get(&lk).await?.and_then(|b| decode::<Lease>(&b))
            && current.until > now
        {
            return Ok(current.holder == holder);
        }
        let lease = Lease {
            holder: holder.to_owned(),
            until: now + self.config.lease_ms,
        };
        let bytes = serde_json::to_vec(&lease).map_err(|e| KvError(e.to_string()))?;
        self.store.set(&lk, &bytes).await?;
        let back = self.store.get(&lk).await?.and_then(|b| decode::<Lease>(&b));
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
    struct Memory(RefCell<HashMap<String, Vec<u8>>>);

    impl KvStore for &Memory {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
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

    #[test]
    fn sold_out_flag_expires() {
        let (store, clock) = setup();
        let cache = EdgeCache::new(&store, &clock, CONFIG);
        assert_eq!(block_on(cache.is_sold_out("a")), Ok(false));
        block_on(cache.mark_sold_out("a")).unwrap();
        clock.0.set(10_699);
        assert_eq!(block_on(cache.is_sold_out("a")), Ok(true));
        clock.0.set(10_700);
        assert_eq!(block_on(cache.is_sold_out("a")), Ok(false));
        block_on(cache.mark_sold_out("a")).unwrap();
        block_on(cache.invalidate("a")).unwrap();
        assert_eq!(block_on(cache.is_sold_out("a")), Ok(false));
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
