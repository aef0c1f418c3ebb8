//! Two settle workers over the same streams: both work, nothing twice, nothing missed.

use std::sync::atomic::Ordering;

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
        applied.push(consumer.metrics().events_applied.load(Ordering::Relaxed));
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
