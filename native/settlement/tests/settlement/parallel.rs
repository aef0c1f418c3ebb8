//! Two settle workers over the same streams: both work, nothing twice, nothing missed.

use anyhow::Result;
use flashcart_settlement::Step;

use crate::support::{Env, assert_ledger_matches, on_both, story, unique_sku};

async fn two_consumers_share_the_work(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("par");
    let s = story(&inv, &sku, 600, 4).await?;
    let ids = env.stream_ids().await?;

    let mut handles = Vec::new();
    for name in ["left", "right"] {
        let mut config = env.config(name);
        config.batch_size = 50;
        // An order's events may be split between the two workers' batches: a payment can
        // reach the ledger before its order and must wait (retry with backoff) for it.
        config.retry_base = std::time::Duration::from_millis(100);
        config.max_failures = 5;
        let mut consumer = env.consumer(config).await?;
        let target = i64::try_from(ids.len())?;
        handles.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while consumer.ledger().counts().await?.applied_events < target {
                anyhow::ensure!(std::time::Instant::now() < deadline, "settled in time");
                if consumer.step().await? == Step::Idle {
                    consumer.recover().await?;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            Ok::<_, anyhow::Error>(consumer)
        }));
    }
    let mut applied = Vec::new();
    let mut ledger = None;
    for h in handles {
        let consumer = h.await??;
        applied.push(
            consumer
                .metrics()
                .value("flashcart_settle_events_applied_total")
                .map_or(0, |n| n as u64),
        );
        ledger = Some(consumer.ledger().clone());
    }
    let ledger = ledger.expect("two consumers");
    assert!(applied.iter().all(|n| *n > 0), "both did work: {applied:?}");
    assert_eq!(
        applied.iter().sum::<u64>(),
        ids.len() as u64,
        "applied once in total: {applied:?}"
    );
    assert_ledger_matches(&ledger, &ids, &s).await?;
    Ok(())
}
on_both!(two_consumers_share_the_work);

/// `GET /metrics` of a child, and one counter from it.
async fn counter(addr: std::net::SocketAddr, name: &str) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .ok_or_else(|| anyhow::anyhow!("{name} missing:\n{out}"))?;
    Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
}

async fn two_processes_share_the_work(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("procs");
    let s = story(&inv, &sku, 1_500, 4).await?;
    let ids = env.stream_ids().await?;
    let target = i64::try_from(ids.len())?;

    let mut children = Vec::new();
    for name in ["proc-a", "proc-b"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashcart-settle"))
            .args([
                "--redis-url",
                &env.redis.url(),
                "--ledger-url",
                &env.ledger_url,
            ])
            .args(["--consumer", name, "--batch-size", "100", "--no-timers"])
            .args([
                "--retry-base",
                "200ms",
                "--claim-idle",
                "2s",
                "--maintain-every",
                "100ms",
            ])
            .args(["--metrics-addr", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        children.push((child, addr));
    }
    let ledger = env.ledger().await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ledger.counts().await?.applied_events < target {
        anyhow::ensure!(std::time::Instant::now() < deadline, "settled in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The counters move right after each batch's XACK, a moment after its commit.
    let applied = loop {
        let mut applied = Vec::new();
        for (_, addr) in &children {
            applied.push(counter(*addr, "flashcart_settle_events_applied_total").await?);
        }
        if applied.iter().sum::<u64>() >= ids.len() as u64 || std::time::Instant::now() > deadline {
            break applied;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // SIGTERM: each finishes its batch in hand and exits cleanly.
    for (child, _) in &mut children {
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("child gone"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM");
        let exit = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await??;
        assert!(exit.success(), "graceful exit: {exit}");
    }
    assert!(
        applied.iter().all(|n| *n > 0),
        "both processes did work: {applied:?}"
    );
    assert_eq!(
        applied.iter().sum::<u64>(),
        ids.len() as u64,
        "applied once in total: {applied:?}"
    );
    assert_ledger_matches(&ledger, &ids, &s).await?;
    Ok(())
}
on_both!(two_processes_share_the_work);
