//! Reserve throughput and latency against a private redis-server (or cluster), with a PING
//! round trip over the same connections as the baseline measured in the same run. Every
//! reserve draws from its buyer's token bucket (20 burst, 10/s: the edge's default), inside
//! the same call; each buyer reserves once, so none is refused.
//!
//! `cargo run --release -p flashcart-inventory --example reserve_bench -- [single|cluster] [reserves] [concurrency]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashcart_core::exec::RedisExecutor;
use flashcart_core::ids::{BuyerId, Currency, IdempotencyKey, Quantity, SkuId};
use flashcart_core::inventory::{Now, RateLimit, ReserveRequest};
use flashcart_core::sku::SkuSpec;
use flashcart_core::{Inventory, KeySchema, Settings};
use flashcart_inventory::{RedisConn, Target};
use flashcart_testkit::{RedisCluster, RedisServer};

const CONNECTIONS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run<F, Fut>(total: usize, concurrency: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let op = Arc::clone(&op);
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = worker;
            while i < total {
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
                i += concurrency;
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(l) = tasks.join_next().await {
        all.extend(l.expect("worker"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (total as f64 / secs, all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("single", String::as_str).to_owned();
    let total: usize = args.get(2).map_or(Ok(50_000), |s| s.parse())?;
    let concurrency: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let (_single, _cluster, target) = match mode.as_str() {
        "cluster" => {
            let c = RedisCluster::start(3)?;
            let t = Target::Cluster(c.urls());
            (None, Some(c), t)
        }
        _ => {
            let s = RedisServer::start()?;
            let t = Target::Single(s.url());
            (Some(s), None, t)
        }
    };
    let settings = Settings {
        buyer_rate: Some(RateLimit {
            capacity: 20,
            refill_per_second: 10,
        }),
        ..Settings::default()
    };
    let first = flashcart_inventory::open(&target, KeySchema::default(), settings).await?;
    let mut invs = vec![Arc::new(first)];
    for _ in 1..CONNECTIONS {
        invs.push(Arc::new(Inventory::new(
            RedisConn::connect(&target).await?,
            KeySchema::default(),
            settings,
        )));
    }
    let sku = SkuId::parse("bench")?;
    invs[0]
        .load_sku(
            &SkuSpec {
                sku: sku.clone(),
                stock: total as u64 * 2,
                segments: Some(16),
                price: 100,
                currency: Currency::parse("EUR")?,
                sale_start: 0,
                sale_end: u64::MAX / 4,
                per_buyer_limit: 0,
                reservation_ttl_ms: 600_000,
                payment_window_ms: 600_000,
            },
            Now::Server,
        )
        .await?;

    let ping_invs = invs.clone();
    let (ping_rate, ping_lat) = run(total, concurrency, move |i| {
        let inv = Arc::clone(&ping_invs[i % CONNECTIONS]);
        async move {
            inv.executor().execute("PING", vec![]).await.expect("ping");
        }
    })
    .await;
    let res_invs = invs.clone();
    let (rate, lat) = run(total, concurrency, move |i| {
        let inv = Arc::clone(&res_invs[i % CONNECTIONS]);
        let sku = sku.clone();
        async move {
            let req = ReserveRequest {
                request: None,
                sku,
                buyer: BuyerId::parse(&format!("b{i}")).expect("buyer"),
                quantity: Quantity::new(1).expect("qty"),
                key: IdempotencyKey::parse(&format!("k{i}")).expect("key"),
                fingerprint: "bench".into(),
            };
            inv.reserve(&req, Now::Server).await.expect("reserve");
        }
    })
    .await;
    println!("mode={mode} ops={total} concurrency={concurrency} connections={CONNECTIONS}");
    println!(
        "baseline PING : {ping_rate:>9.0} ops/s  p50 {:>7.1?}  p99 {:>7.1?}",
        percentile(&ping_lat, 0.5),
        percentile(&ping_lat, 0.99)
    );
    println!(
        "reserve FCALL : {rate:>9.0} ops/s  p50 {:>7.1?}  p99 {:>7.1?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("reserve/PING throughput ratio: {:.2}", rate / ping_rate);
    // Server-side cost, independent of client load: Redis's own per-call time.
    let stats = invs[0]
        .executor()
        .execute("INFO", vec!["commandstats".into()])
        .await?;
    let text: String = stats
        .iter()
        .filter_map(flashcart_core::Value::text)
        .collect();
    for line in text
        .lines()
        .filter(|l| l.starts_with("cmdstat_fcall:") || l.starts_with("cmdstat_ping:"))
    {
        println!("server {line}");
    }
    Ok(())
}
