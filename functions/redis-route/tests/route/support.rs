//! A `Connector` over the `redis` crate, with an optional list of allowed nodes (as
//! `allowed_outbound_hosts` would give), an in-memory key-value store and helpers to move a
//! slot between masters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use flashcart_core::exec::Value;
use flashcart_core::inventory::Now;
use flashcart_core::{Inventory, KeySchema, Settings};
use flashcart_edge_cache::{Clock, KvError, KvStore};
use flashcart_redis_route::{Connector, MapCache, OpenError, Router, Seeds};
use flashcart_testkit::{RedisCluster, RedisServer};

/// Opens nodes with the `redis` crate; refuses those not in `allowed` (when set), counts opens.
#[derive(Default)]
pub(crate) struct NativeConnector {
    pub(crate) allowed: Option<Vec<String>>,
    pub(crate) opens: Cell<usize>,
}

impl Connector for NativeConnector {
    type Connection = redis::aio::MultiplexedConnection;

    async fn open(&self, url: &str) -> Result<Self::Connection, OpenError> {
        if let Some(allowed) = &self.allowed
            && !allowed.iter().any(|a| url.ends_with(a.as_str()))
        {
            return Err(OpenError::NotAllowed);
        }
        self.opens.set(self.opens.get() + 1);
        let client = redis::Client::open(url).map_err(|e| OpenError::Unreachable(e.to_string()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(20)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))
    }

    async fn execute(
        &self,
        conn: &Self::Connection,
        command: &str,
        args: &[String],
    ) -> Result<Vec<Value>, String> {
        let mut cmd = redis::cmd(command);
        for a in args {
            cmd.arg(a);
        }
        let value: redis::Value = cmd
            .query_async(&mut conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        flashcart_inventory::flat_reply(value).map_err(|e| e.message)
    }

    async fn pause(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The node's key-value store, in memory; shared by clones (two "instances" of one node).
#[derive(Clone, Default)]
pub(crate) struct MemoryKv(pub(crate) Rc<RefCell<HashMap<String, Vec<u8>>>>);

impl KvStore for MemoryKv {
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

/// The wall clock.
#[derive(Clone, Copy)]
pub(crate) struct Wall;

impl Clock for Wall {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

pub(crate) type TestRouter = Router<NativeConnector, MemoryKv, Wall>;

pub(crate) fn router(seeds: &str, connector: NativeConnector, kv: &MemoryKv) -> TestRouter {
    let cache = MapCache {
        store: kv.clone(),
        clock: Wall,
        ttl_ms: 60_000,
    };
    Router::new(Seeds::parse(seeds).expect("seeds"), connector, Some(cache))
}

pub(crate) fn inventory(router: TestRouter) -> Inventory<TestRouter> {
    Inventory::new(router, KeySchema::default(), Settings::default())
}

/// `host:port` of every node of the cluster.
pub(crate) fn addresses(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect()
}

/// Sale window used by the specs: open from T0 for a long time.
pub(crate) const T0: u64 = 1_800_000_000_000;

pub(crate) fn now() -> Now {
    Now::At(T0 + 1)
}

/// A SKU name unique within this test process.
pub(crate) fn unique_sku(prefix: &str) -> flashcart_core::ids::SkuId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    flashcart_core::ids::SkuId::parse(&format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed)))
        .expect("sku")
}

/// `stock` units in 16 segments (every partition), on sale from T0.
pub(crate) fn spec(sku: &flashcart_core::ids::SkuId, stock: u64) -> flashcart_core::sku::SkuSpec {
    flashcart_core::sku::SkuSpec {
        sku: sku.clone(),
        stock,
        segments: Some(16),
        price: 2_500,
        currency: flashcart_core::ids::Currency::parse("EUR").expect("currency"),
        sale_start: T0,
        sale_end: T0 + 3_600_000,
        per_buyer_limit: 0,
        reservation_ttl_ms: 60_000,
        payment_window_ms: 120_000,
    }
}

/// A one-unit reserve for `buyer` with its own idempotency key.
pub(crate) fn reserve(
    sku: &flashcart_core::ids::SkuId,
    buyer: &str,
) -> flashcart_core::inventory::ReserveRequest {
    use flashcart_core::ids::{BuyerId, IdempotencyKey, Quantity};
    let body = format!("{{\"sku\":\"{sku}\",\"buyer\":\"{buyer}\"}}");
    flashcart_core::inventory::ReserveRequest {
        request: None,
        sku: sku.clone(),
        buyer: BuyerId::parse(buyer).expect("buyer"),
        quantity: Quantity::new(1).expect("qty"),
        key: IdempotencyKey::parse(&format!("key-{buyer}")).expect("key"),
        fingerprint: flashcart_core::fingerprint(sku.as_str(), body.as_bytes()),
    }
}

/// Calls of `command` (e.g. `cluster|nodes`, `fcall`) over `servers`, from `INFO commandstats`.
pub(crate) fn calls(servers: &[RedisServer], command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    servers
        .iter()
        .map(|s| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut s.connection().expect("conn"))
                .expect("info");
            info.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .filter_map(|rest| {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum()
}

/// Keys on `server`.
pub(crate) fn key_count(server: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query(&mut server.connection().expect("conn"))
        .expect("dbsize")
}
