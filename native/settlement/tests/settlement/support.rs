//! Shared set-up: a private Redis and ledger per test, consumers over them, and a story of
//! real inventory decisions to settle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use flashcart_core::ids::{
    BuyerId, Currency, IdempotencyKey, OrderId, PspEventId, Quantity, SkuId,
};
use flashcart_core::inventory::{OrderRequest, PaymentNotice, ReserveRequest};
use flashcart_core::sku::SkuSpec;
use flashcart_core::{KeySchema, Now, Settings};
use flashcart_inventory::{NativeInventory, Target};
use flashcart_settlement::{Consumer, ConsumerConfig, Ledger, Metrics, Step};
use flashcart_testkit::RedisServer;
use flashcart_testkit::postgres::PostgresServer;
use redis::aio::ConnectionManager;

/// Sale window of the test SKUs: open from T0 for an hour.
pub(crate) const T0: u64 = 1_800_000_000_000;

/// Which ledger database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// A private Redis and a private ledger database.
pub(crate) struct Env {
    pub(crate) redis: RedisServer,
    _pg: Option<PostgresServer>,
    _dir: tempfile::TempDir,
    pub(crate) ledger_url: String,
    pub(crate) schema: KeySchema,
}

/// Runs a test body once on SQLite and once on PostgreSQL.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$name(crate::support::Env::start(crate::support::Db::Sqlite)?).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$name(crate::support::Env::start(crate::support::Db::Postgres)?).await
            }
        }
    };
}
pub(crate) use on_both;

impl Env {
    pub(crate) fn start(db: Db) -> Result<Self> {
        let redis = RedisServer::start()?;
        let dir = tempfile::tempdir()?;
        let (pg, ledger_url) = match db {
            Db::Sqlite => (None, dir.path().join("ledger.sqlite").display().to_string()),
            Db::Postgres => {
                let pg = PostgresServer::start()?;
                let url = pg.url().to_owned();
                (Some(pg), url)
            }
        };
        Ok(Self {
            redis,
            _pg: pg,
            _dir: dir,
            ledger_url,
            schema: KeySchema::default(),
        })
    }

    pub(crate) async fn conn(&self) -> Result<ConnectionManager> {
        Ok(redis::Client::open(self.redis.url())?
            .get_connection_manager()
            .await?)
    }

    pub(crate) async fn ledger(&self) -> Result<Ledger> {
        Ok(Ledger::open(&self.ledger_url).await?)
    }

    pub(crate) async fn inventory(&self) -> Result<NativeInventory> {
        Ok(flashcart_inventory::open(
            &Target::Single(self.redis.url()),
            self.schema,
            Settings::default(),
        )
        .await?)
    }

    pub(crate) fn config(&self, consumer: &str) -> ConsumerConfig {
        ConsumerConfig {
            consumer: consumer.to_owned(),
            batch_size: 200,
            claim_idle: std::time::Duration::from_millis(500),
            retry_base: std::time::Duration::from_millis(20),
            max_failures: 3,
            ..ConsumerConfig::default()
        }
    }

    pub(crate) async fn consumer(
        &self,
        config: ConsumerConfig,
    ) -> Result<Consumer<ConnectionManager>> {
        Ok(Consumer::new(
            self.conn().await?,
            self.ledger().await?,
            self.schema,
            config,
            Arc::new(Metrics::default()),
        )
        .await?)
    }

    /// `XADD` of raw fields to partition `p`'s stream.
    pub(crate) async fn xadd(&self, p: u16, fields: &[(&str, &str)]) -> Result<String> {
        let mut conn = self.conn().await?;
        let key = self.schema.events(flashcart_core::Partition::new(p));
        Ok(redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg(fields)
            .query_async(&mut conn)
            .await?)
    }

    /// Every entry ever added to the partition streams (`entries-added`, unaffected by trims).
    pub(crate) async fn entries_added(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        let mut total = 0;
        for p in self.schema.partitions() {
            let info: redis::Value = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(self.schema.events(p))
                .query_async(&mut conn)
                .await?;
            let map: std::collections::HashMap<String, redis::Value> =
                redis::from_redis_value(info)?;
            total += match map.get("entries-added") {
                Some(redis::Value::Int(n)) => u64::try_from(*n)?,
                _ => 0,
            };
        }
        Ok(total)
    }

    /// Every (partition, id) now in the partition streams.
    pub(crate) async fn stream_ids(&self) -> Result<BTreeSet<(i64, String)>> {
        let mut conn = self.conn().await?;
        let mut out = BTreeSet::new();
        for p in self.schema.partitions() {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(self.schema.events(p))
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await?;
            out.extend(
                entries
                    .into_iter()
                    .map(|(id, _)| (i64::from(p.index()), id)),
            );
        }
        Ok(out)
    }
}

/// Steps `consumer` until it is idle; returns entries settled.
pub(crate) async fn drain<C: redis::aio::ConnectionLike + Send>(
    consumer: &mut Consumer<C>,
) -> Result<usize> {
    let mut total = 0;
    while let Step::Applied(n) = consumer.step().await? {
        total += n;
    }
    Ok(total)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_sku(prefix: &str) -> SkuId {
    SkuId::parse(&format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed))).expect("sku")
}

pub(crate) fn spec(sku: &SkuId, stock: u64, ttl_ms: u64, paywin_ms: u64) -> SkuSpec {
    SkuSpec {
        sku: sku.clone(),
        stock,
        segments: None,
        price: 2_500,
        currency: Currency::parse("EUR").expect("currency"),
        sale_start: T0,
        sale_end: T0 + 3_600_000,
        per_buyer_limit: 0,
        reservation_ttl_ms: ttl_ms,
        payment_window_ms: paywin_ms,
    }
}

pub(crate) fn reserve_req(sku: &SkuId, buyer: &str, qty: u64, key: &str) -> ReserveRequest {
    let body = format!("{{\"sku\":\"{sku}\",\"quantity\":{qty}}}");
    ReserveRequest {
        request: None,
        sku: sku.clone(),
        buyer: BuyerId::parse(buyer).expect("buyer"),
        quantity: Quantity::new(qty).expect("qty"),
        key: IdempotencyKey::parse(key).expect("key"),
        fingerprint: flashcart_core::fingerprint("", body.as_bytes()),
    }
}

pub(crate) fn order_req(
    rsv: &flashcart_core::ids::ReservationId,
    buyer: &str,
    key: &str,
) -> OrderRequest {
    OrderRequest {
        request: None,
        reservation: rsv.clone(),
        buyer: BuyerId::parse(buyer).expect("buyer"),
        key: IdempotencyKey::parse(key).expect("key"),
        fingerprint: flashcart_core::fingerprint("", rsv.to_string().as_bytes()),
    }
}

pub(crate) fn payment(order: &OrderId, event: &str, amount: u64) -> PaymentNotice {
    PaymentNotice {
        request: None,
        order: order.clone(),
        event_id: PspEventId::parse(event).expect("psp event"),
        amount,
        currency: Currency::parse("EUR").expect("currency"),
    }
}

/// What a story produced.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Story {
    pub(crate) reservations: u64,
    pub(crate) orders: u64,
    pub(crate) paid: u64,
    pub(crate) rejected: u64,
    pub(crate) released: u64,
}

/// Real decisions through the core's functions: `buyers` buyers reserve 1–3 units; 3 in 4 make
/// an order, of which 2 in 3 pay (and every 10th pays a wrong amount first); every 8th
/// reservation that was not ordered is released by its buyer. About 2.4 events per buyer.
pub(crate) async fn story(
    inv: &NativeInventory,
    sku: &SkuId,
    buyers: u64,
    tasks: u64,
) -> Result<Story> {
    let stock = buyers * 3 + 100;
    inv.load_sku(&spec(sku, stock, 600_000, 900_000), Now::At(T0))
        .await
        .context("load_sku")?;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let inv = inv.clone();
        let sku = sku.clone();
        handles.push(tokio::spawn(async move {
            let mut s = Story::default();
            let mut i = t;
            while i < buyers {
                let now = Now::At(T0 + 1_000 + i);
                let buyer = format!("b{i}");
                let qty = 1 + i % 3;
                let r = inv
                    .reserve(&reserve_req(&sku, &buyer, qty, &format!("r{i}")), now)
                    .await
                    .map_err(|e| anyhow::anyhow!("reserve: {e}"))?;
                s.reservations += 1;
                if i % 4 == 0 {
                    if i % 8 == 0 {
                        inv.release(
                            &r.id,
                            flashcart_core::inventory::ReleaseReason::Cancelled,
                            now,
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("release: {e}"))?;
                        s.released += 1;
                    }
                } else {
                    let o = inv
                        .create_order(&order_req(&r.id, &buyer, &format!("o{i}")), now)
                        .await
                        .map_err(|e| anyhow::anyhow!("order: {e}"))?;
                    s.orders += 1;
                    if i % 3 != 0 {
                        if i % 10 == 1 {
                            inv.apply_payment(
                                &payment(&o.id, &format!("bad{i}"), o.amount + 1),
                                now,
                            )
                            .await
                            .map_err(|e| anyhow::anyhow!("pay: {e}"))?;
                            s.rejected += 1;
                        }
                        inv.apply_payment(&payment(&o.id, &format!("ev{i}"), o.amount), now)
                            .await
                            .map_err(|e| anyhow::anyhow!("pay: {e}"))?;
                        s.paid += 1;
                    }
                }
                i += tasks;
            }
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let mut total = Story::default();
    for h in handles {
        let s = h.await??;
        total.reservations += s.reservations;
        total.orders += s.orders;
        total.paid += s.paid;
        total.rejected += s.rejected;
        total.released += s.released;
    }
    Ok(total)
}

/// Asserts that the ledger holds exactly the events in `ids` (no more, no fewer) and that its
/// tables agree with the story.
pub(crate) async fn assert_ledger_matches(
    ledger: &Ledger,
    ids: &BTreeSet<(i64, String)>,
    s: &Story,
) -> Result<()> {
    let counts = ledger.counts().await?;
    assert_eq!(
        counts.applied_events,
        i64::try_from(ids.len())?,
        "every event applied, once"
    );
    let applied: BTreeSet<(i64, String)> = ledger
        .applied_ids()
        .await?
        .into_iter()
        .map(|(p, id)| (i64::from(p.index()), id.to_string()))
        .collect();
    assert!(
        applied == *ids,
        "the ledger holds exactly the stream's events"
    );
    assert_eq!(counts.reservations, i64::try_from(s.reservations)?);
    assert_eq!(counts.orders, i64::try_from(s.orders)?);
    assert_eq!(counts.payments, i64::try_from(s.paid + s.rejected)?);
    // One ledger row per order transition: created + paid.
    assert_eq!(counts.order_events, i64::try_from(s.orders + s.paid)?);
    Ok(())
}
