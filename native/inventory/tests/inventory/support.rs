//! Shared set-up: private servers, inventories over them, SKU specs, stream reading.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use flashcart_core::event::{Event, EventKind};
use flashcart_core::ids::{BuyerId, Currency, IdempotencyKey, Quantity, SkuId};
use flashcart_core::inventory::ReserveRequest;
use flashcart_core::sku::SkuSpec;
use flashcart_core::{KeySchema, Partition, Settings};
use flashcart_inventory::{NativeInventory, RedisConn, Target, Timeouts};
use flashcart_testkit::{RedisCluster, RedisServer, Snapshot};

/// Sale window used by the specs: open from T0 for a long time.
pub(crate) const T0: u64 = 1_800_000_000_000;

/// The clients' patience in tests: a busy 2-core machine (load 5 and more) can keep a
/// cluster node from answering for seconds; a lost answer still fails the test, only later.
pub(crate) const PATIENT: Timeouts = Timeouts {
    response: std::time::Duration::from_secs(60),
    connection: std::time::Duration::from_secs(20),
};

/// A private Redis deployment and an inventory over it.
pub(crate) enum Deployment {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    pub(crate) fn single() -> Self {
        Deployment::Single(RedisServer::start().expect("start redis-server"))
    }

    pub(crate) fn cluster() -> Self {
        Deployment::Cluster(RedisCluster::start(3).expect("start a 3-master redis cluster"))
    }

    pub(crate) fn target(&self) -> Target {
        match self {
            Deployment::Single(s) => Target::Single(s.url()),
            Deployment::Cluster(c) => Target::Cluster(c.urls()),
        }
    }

    pub(crate) async fn inventory(&self) -> NativeInventory {
        self.inventory_with(Settings::default()).await
    }

    /// A second, independent connection (for concurrency across connections).
    pub(crate) async fn extra_inventory(&self) -> NativeInventory {
        let conn = RedisConn::connect_with(&self.target(), PATIENT)
            .await
            .expect("connect");
        flashcart_core::Inventory::new(conn, KeySchema::default(), Settings::default())
    }

    /// An inventory with other settings (e.g. a buyer rate) over the same deployment.
    pub(crate) async fn inventory_with(&self, settings: Settings) -> NativeInventory {
        flashcart_inventory::open_with(&self.target(), KeySchema::default(), settings, PATIENT)
            .await
            .expect("open inventory")
    }

    /// `FCALL` and `FCALL_RO` calls so far, over every node (`INFO commandstats`).
    pub(crate) fn function_calls(&self) -> u64 {
        self.servers()
            .into_iter()
            .map(|s| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut s.connection().expect("connect"))
                    .expect("info");
                info.lines()
                    .filter(|l| {
                        l.starts_with("cmdstat_fcall:") || l.starts_with("cmdstat_fcall_ro:")
                    })
                    .filter_map(|l| {
                        l.split([':', ','])
                            .find_map(|kv| kv.strip_prefix("calls="))?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    pub(crate) fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Deployment::Single(s) => vec![s],
            Deployment::Cluster(c) => c.nodes().iter().collect(),
        }
    }

    /// Every key of every node.
    pub(crate) fn snapshot(&self) -> Vec<Snapshot> {
        self.servers()
            .into_iter()
            .map(|s| flashcart_testkit::snapshot(s).expect("snapshot"))
            .collect()
    }

    /// Every entry of every partition stream, parsed by the core, in stream order per
    /// partition. Each must be an event that writes back to exactly its fields.
    pub(crate) fn events(&self) -> Vec<StreamEvent> {
        let schema = KeySchema::default();
        let mut out = Vec::new();
        for p in schema.partitions() {
            let key = schema.events(p);
            for server in self.servers() {
                let mut conn = server.connection().expect("connect");
                // On a cluster only the owner of the slot answers; the others say MOVED.
                let Ok(entries) = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query::<Vec<(String, BTreeMap<String, String>)>>(&mut conn)
                else {
                    continue;
                };
                for (id, fields) in entries {
                    let event = parse_exactly(&fields);
                    out.push(StreamEvent {
                        partition: p,
                        id,
                        fields,
                        event,
                    });
                }
            }
        }
        out
    }

    pub(crate) fn events_of(&self, sku: &SkuId, kind: EventKind) -> Vec<StreamEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.event.body.kind() == kind && e.event.sku == sku.as_str())
            .collect()
    }
}

/// One stream entry and the core's event in it.
#[derive(Debug)]
pub(crate) struct StreamEvent {
    pub(crate) partition: Partition,
    #[expect(dead_code, reason = "shown in assertion messages (Debug)")]
    pub(crate) id: String,
    pub(crate) fields: BTreeMap<String, String>,
    pub(crate) event: Event,
}

/// The core's event in `fields`, which must write back to exactly `fields`: a field the
/// library writes that the core does not know (or spells differently) fails here.
pub(crate) fn parse_exactly(fields: &BTreeMap<String, String>) -> Event {
    let event = Event::parse(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .unwrap_or_else(|e| panic!("stream entry {fields:?} is not a core event: {e}"));
    let written: BTreeMap<String, String> = event
        .fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(
        &written, fields,
        "the core's event does not write back to the library's fields"
    );
    event
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A SKU name unique within this test process.
pub(crate) fn unique_sku(prefix: &str) -> SkuId {
    SkuId::parse(&format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed))).expect("sku")
}

pub(crate) fn spec(sku: &SkuId, stock: u64, segments: Option<u16>, limit: u32) -> SkuSpec {
    SkuSpec {
        sku: sku.clone(),
        stock,
        segments,
        price: 2_500,
        currency: Currency::parse("EUR").expect("currency"),
        sale_start: T0,
        sale_end: T0 + 3_600_000,
        per_buyer_limit: limit,
        reservation_ttl_ms: 60_000,
        payment_window_ms: 120_000,
    }
}

pub(crate) fn buyer(name: &str) -> BuyerId {
    BuyerId::parse(name).expect("buyer")
}

pub(crate) fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::parse(name).expect("key")
}

pub(crate) fn reserve_req(
    sku: &SkuId,
    buyer_name: &str,
    qty: u64,
    key_name: &str,
) -> ReserveRequest {
    let body = format!("{{\"sku\":\"{sku}\",\"quantity\":{qty}}}");
    ReserveRequest {
        request: None,
        sku: sku.clone(),
        buyer: buyer(buyer_name),
        quantity: Quantity::new(qty).expect("qty"),
        key: key(key_name),
        fingerprint: flashcart_core::fingerprint("", body.as_bytes()),
    }
}
