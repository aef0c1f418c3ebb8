//! Settlement throughput: events/s applied to the ledger (SQLite and PostgreSQL, several batch
//! sizes) and stream lag under a sustained producer. Starts its own private redis-server and
//! PostgreSQL (fsync on); never touches servers on default ports.
//!
//! ```sh
//! cargo run --release -p flashcart-settlement --example settle-bench -- --events 60000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use flashcart_core::KeySchema;
use flashcart_core::event::{Body, Event};
use flashcart_settlement::{Consumer, ConsumerConfig, Ledger, Metrics, Step};
use flashcart_testkit::RedisServer;
use flashcart_testkit::postgres::PostgresServer;
use redis::aio::ConnectionManager;

/// Measure settlement throughput and lag.
#[derive(Debug, Parser)]
struct Args {
    /// Events per throughput run (a multiple of 3 is used: reservation, order, payment).
    #[arg(long, default_value_t = 60_000)]
    events: u64,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
    batches: Vec<usize>,
    /// Ledger backends: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    db: Vec<String>,
    /// Runs per setting; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sustained producer: events/s (0 skips the lag run).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Sustained producer: seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Batch size for the lag run.
    #[arg(long, default_value_t = 1000)]
    lag_batch: usize,
}

const SKU: &str = "bench";

/// The three events of buyer `k` (reservation, order, payment), through the core's type.
fn fields_for(k: u64, schema: &KeySchema) -> [Vec<(&'static str, String)>; 3] {
    let p = u64::from(schema.partition_count());
    let part = k % p;
    let seg = i64::try_from(part).unwrap_or(0);
    let token = format!("{:016x}", k);
    let rsv = format!("rsv_{part:02}_{token}_{SKU}");
    let ord = format!("ord_{part:02}_{token}_{SKU}");
    let at = 1_800_000_000_000 + i64::try_from(k).unwrap_or(0);
    // As a buyer's requests write them: each event names the request that decided it.
    let event = |body| Event {
        at,
        sku: SKU.to_owned(),
        request: Some(format!("req-{k:016x}")),
        body,
    };
    [
        Body::ReservationCreated {
            rsv: rsv.clone(),
            seg,
            qty: 1,
            buyer: format!("b{k}"),
            expires: 1_900_000_000_000,
        },
        Body::OrderCreated {
            ord: ord.clone(),
            rsv,
            seg,
            qty: 1,
            buyer: format!("b{k}"),
            amount: 2500,
            currency: "EUR".into(),
            deadline: 1_900_000_000_000,
        },
        Body::OrderPaid {
            ord,
            seg,
            qty: 1,
            psp_event: format!("ev{k}"),
            amount: 2500,
            currency: "EUR".into(),
        },
    ]
    .map(|body| event(body).fields())
}

async fn load(conn: &mut ConnectionManager, schema: &KeySchema, buyers: u64) -> Result<()> {
    for p in schema.partitions() {
        redis::cmd("XADD")
            .arg(schema.events(p))
            .arg("*")
            .arg(
                Event {
                    at: 1_800_000_000_000,
                    sku: SKU.into(),
                    request: None,
                    body: Body::SkuLoaded {
                        stock: 100_000_000,
                        segs: 16,
                        segments: vec![(i64::from(p.index()), 100_000_000 / 16)],
                        price: 2500,
                        currency: "EUR".into(),
                        start: 0,
                        end: 1_900_000_000_000,
                        limit: 0,
                        ttl: 600_000,
                        paywin: 900_000,
                        fp: None,
                    },
                }
                .fields(),
            )
            .query_async::<String>(conn)
            .await?;
    }
    produce(conn, schema, 0, buyers).await
}

/// XADDs the three events of buyers `from..to`, each in its partition, pipelined.
async fn produce(
    conn: &mut ConnectionManager,
    schema: &KeySchema,
    from: u64,
    to: u64,
) -> Result<()> {
    let parts: Vec<_> = schema.partitions().collect();
    let mut k = from;
    while k < to {
        let mut pipe = redis::pipe();
        for j in k..(k + 300).min(to) {
            let key = schema.events(parts[(j % parts.len() as u64) as usize]);
            for f in fields_for(j, schema) {
                pipe.cmd("XADD").arg(&key).arg("*").arg(&f).ignore();
            }
        }
        pipe.query_async::<()>(conn).await?;
        k = (k + 300).min(to);
    }
    Ok(())
}

async fn consumer(
    redis: &RedisServer,
    ledger: &Ledger,
    batch: usize,
) -> Result<Consumer<ConnectionManager>> {
    let conn = redis::Client::open(redis.url())?
        .get_connection_manager()
        .await?;
    let config = ConsumerConfig {
        consumer: "bench".into(),
        batch_size: batch,
        ..ConsumerConfig::default()
    };
    Ok(Consumer::new(
        conn,
        ledger.clone(),
        KeySchema::default(),
        config,
        Arc::new(Metrics::default()),
    )
    .await?)
}

struct Db {
    url: String,
    _pg: Option<PostgresServer>,
    _dir: tempfile::TempDir,
}

fn database(kind: &str) -> Result<Db> {
    let dir = tempfile::tempdir()?;
    Ok(match kind {
        "sqlite" => Db {
            url: dir.path().join("ledger.sqlite").display().to_string(),
            _pg: None,
            _dir: dir,
        },
        "postgres" => {
            let pg = PostgresServer::start_durable()?;
            Db {
                url: pg.url().to_owned(),
                _pg: Some(pg),
                _dir: dir,
            }
        }
        other => anyhow::bail!("unknown --db {other}"),
    })
}

async fn throughput(kind: &str, batch: usize, events: u64) -> Result<f64> {
    let redis = RedisServer::start()?;
    let db = database(kind)?;
    let ledger = Ledger::open(&db.url).await?;
    let schema = KeySchema::default();
    let mut conn = redis::Client::open(redis.url())?
        .get_connection_manager()
        .await?;
    let buyers = events / 3;
    load(&mut conn, &schema, buyers).await?;
    let total = buyers * 3 + u64::from(schema.partition_count());
    let mut c = consumer(&redis, &ledger, batch).await?;
    let started = Instant::now();
    let mut settled = 0;
    while let Step::Applied(n) = c.step().await? {
        settled += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(settled == total, "settled {settled} of {total}");
    anyhow::ensure!(ledger.counts().await?.applied_events == i64::try_from(total)?);
    Ok(total as f64 / secs)
}

async fn lag(kind: &str, batch: usize, rate: u64, seconds: u64) -> Result<(i64, i64, i64, f64)> {
    let redis = RedisServer::start()?;
    let db = database(kind)?;
    let ledger = Ledger::open(&db.url).await?;
    let schema = KeySchema::default();
    let mut conn = redis::Client::open(redis.url())?
        .get_connection_manager()
        .await?;
    load(&mut conn, &schema, 0).await?;
    let mut c = consumer(&redis, &ledger, batch).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.step().await? == Step::Idle {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    // Producer: every 10 ms, the buyers due by then (3 events each).
    let per_tick = (rate / 3 / 100).max(1);
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut k = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sampler = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        produce(&mut conn, &schema, k, k + per_tick).await?;
        k += per_tick;
        if sampler.elapsed() >= Duration::from_millis(100) {
            sampler = Instant::now();
            samples.push(in_flight(&mut conn, &schema).await?);
        }
    }
    let produced_for = started.elapsed().as_secs_f64();
    let total = i64::try_from(k * 3 + u64::from(schema.partition_count()))?;
    let catch_up = Instant::now();
    while ledger.counts().await?.applied_events < total {
        anyhow::ensure!(catch_up.elapsed() < Duration::from_secs(120), "caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let catch_up = catch_up.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.await??;
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    eprintln!(
        "  produced {} events in {produced_for:.1}s ({:.0}/s)",
        k * 3,
        (k * 3) as f64 / produced_for
    );
    Ok((
        pick(0.5),
        pick(0.99),
        *samples.last().unwrap_or(&0),
        catch_up,
    ))
}

/// Entries not yet acknowledged by the group: lag (undelivered) + pending (delivered, unacked).
async fn in_flight(conn: &mut ConnectionManager, schema: &KeySchema) -> Result<i64> {
    let mut total = 0;
    for p in schema.partitions() {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(schema.events(p))
            .query_async(conn)
            .await?;
        for g in groups {
            for field in ["lag", "pending"] {
                if let Some(redis::Value::Int(n)) = g.get(field) {
                    total += n;
                }
            }
        }
    }
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("| ledger | batch | events | runs | events/s (median) | all runs |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for kind in &args.db {
        for &batch in &args.batches {
            let mut runs = Vec::new();
            for _ in 0..args.repeat {
                runs.push(
                    throughput(kind, batch, args.events)
                        .await
                        .with_context(|| format!("{kind} batch {batch}"))?,
                );
            }
            let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "| {kind} | {batch} | {} | {} | {:.0} | {} |",
                args.events / 3 * 3 + 16,
                args.repeat,
                median(runs),
                all.join(", ")
            );
        }
    }
    if args.rate > 0 {
        println!();
        println!(
            "| ledger | batch | producer events/s | seconds | lag p50 | lag p99 | lag max | catch-up after stop (s) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for kind in &args.db {
            let (p50, p99, max, catch_up) =
                lag(kind, args.lag_batch, args.rate, args.seconds).await?;
            println!(
                "| {kind} | {} | {} | {} | {p50} | {p99} | {max} | {catch_up:.2} |",
                args.lag_batch, args.rate, args.seconds
            );
        }
    }
    Ok(())
}
