//! `run`: the whole service in-process — settles, serves /metrics and /health, and stops
//! gracefully on shutdown.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Db, Env, story, unique_sku};

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_serves_metrics_and_shuts_down_gracefully() -> Result<()> {
    let env = Env::start(Db::Sqlite)?;
    let inv = env.inventory().await?;
    let s = story(&inv, &unique_sku("svc"), 100, 2).await?;
    let total = env.entries_added().await?;
    assert!(s.reservations == 100 && total > 250);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut config = flashcart_settlement::Config::new(&env.redis.url(), &env.ledger_url);
    config.consumer = Some("svc".into());
    config.metrics_addr = Some(addr);
    // Its own registry: the other tests of this binary run settlements in this process too.
    config.metrics = Some(std::sync::Arc::new(flashcart_settlement::Metrics::default()));
    config.maintain_every = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(flashcart_settlement::run(config, async {
        let _ = stopped.await;
    }));

    let ledger = env.ledger().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.counts().await?.applied_events < i64::try_from(total)? {
        assert!(Instant::now() < deadline, "settled in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Trimmed once acknowledged and committed; gauges refreshed by the same pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = get(addr, "/metrics").await?;
        if m.contains(&format!("flashcart_settle_trimmed_total {total}")) {
            break m;
        }
        assert!(Instant::now() < deadline, "trimmed in time:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains(&format!("flashcart_settle_events_applied_total {total}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashcart_settle_lag{partition=\"p00\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashcart_settle_pending{partition=\"p15\"} 0"),
        "{metrics}"
    );
    let health = get(addr, "/health").await?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), service).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_the_timers_on_the_server_clock() -> Result<()> {
    use flashcart_core::Now;
    let env = Env::start(Db::Sqlite)?;
    let inv = env.inventory().await?;
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let sku = unique_sku("svc-timer");
    let spec = flashcart_core::sku::SkuSpec {
        sale_start: now - 3_600_000,
        sale_end: now + 3_600_000,
        segments: Some(1),
        ..crate::support::spec(&sku, 10, 1_000, 1_000)
    };
    inv.load_sku(&spec, Now::Server)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = inv
        .reserve(
            &crate::support::reserve_req(&sku, "walker", 2, "k1"),
            Now::Server,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let mut config = flashcart_settlement::Config::new(&env.redis.url(), &env.ledger_url);
    config.consumer = Some("svc".into());
    config.maintain_every = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(flashcart_settlement::run(config, async {
        let _ = stopped.await;
    }));

    // About a second later the reservation expires; the service's timer releases it and the
    // release event comes back through the stream into the ledger.
    let ledger = env.ledger().await?;
    let rsv = r.id.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ledger.reservation_state(&rsv).await?.as_deref() != Some("expired") {
        assert!(Instant::now() < deadline, "expired in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stock = inv.stock(&sku).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!((stock.available(), stock.reserved()), (10, 0));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), service).await???;
    Ok(())
}
