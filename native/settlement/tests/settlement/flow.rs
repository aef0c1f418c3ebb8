//! The main flow on both backends: settle real decisions once, redeliveries are no-ops,
//! reconciliation agrees (and finds and repairs tampering), trimming keeps what is unsettled.

use anyhow::Result;
use flashcart_settlement::reconcile::reconcile;

use crate::support::{Env, assert_ledger_matches, drain, on_both, story, unique_sku};

async fn settles_every_event_once_and_redeliveries_are_noops(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("flow");
    let s = story(&inv, &sku, 300, 4).await?;
    let ids = env.stream_ids().await?;
    assert!(ids.len() > 700, "the story made {} events", ids.len());

    let mut consumer = env.consumer(env.config("c1")).await?;
    let settled = drain(&mut consumer).await?;
    assert_eq!(settled, ids.len());
    let ledger = consumer.ledger().clone();
    assert_ledger_matches(&ledger, &ids, &s).await?;

    // Rewind the group: every entry is delivered again, and every one is recognised.
    let mut conn = env.conn().await?;
    for p in env.schema.partitions() {
        redis::cmd("XGROUP")
            .arg("SETID")
            .arg(env.schema.events(p))
            .arg("settlement")
            .arg("0")
            .query_async::<()>(&mut conn)
            .await?;
    }
    let before = ledger.counts().await?;
    let again = drain(&mut consumer).await?;
    assert_eq!(again, ids.len());
    assert_eq!(
        ledger.counts().await?,
        before,
        "a redelivery changes nothing"
    );
    let m = consumer.metrics();
    let applied = m.value("flashcart_settle_events_applied_total");
    assert_eq!(applied, Some(ids.len() as f64));
    let duplicates = m.value("flashcart_settle_events_duplicate_total");
    assert_eq!(duplicates, Some(ids.len() as f64));

    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    assert_eq!(report.in_flight, 0);
    assert!(
        report.segments >= 16 && report.records > 500,
        "{}",
        report.render()
    );
    Ok(())
}
on_both!(settles_every_event_once_and_redeliveries_are_noops);

async fn reconcile_finds_drift_and_repairs_only_the_safe_direction(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("drift");
    story(&inv, &sku, 40, 2).await?;
    let mut consumer = env.consumer(env.config("c1")).await?;
    drain(&mut consumer).await?;
    let ledger = consumer.ledger().clone();
    assert!(
        !reconcile(&inv, &ledger, "settlement", false)
            .await?
            .has_drift()
    );

    // Redis "forgets" a sale (as after losing its last writes): more available than the
    // ledger knows is right. Repair takes it back.
    let stock = inv.stock(&sku).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let seg = stock
        .segments
        .iter()
        .find(|s| s.sold > 0)
        .expect("a segment with sales");
    let key = env
        .schema
        .sku(flashcart_core::Partition::new(seg.partition), &sku);
    let mut conn = env.conn().await?;
    redis::pipe()
        .cmd("HINCRBY")
        .arg(&key)
        .arg(format!("a{}", seg.segment))
        .arg(1)
        .cmd("HINCRBY")
        .arg(&key)
        .arg(format!("s{}", seg.segment))
        .arg(-1)
        .query_async::<()>(&mut conn)
        .await?;
    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(report.has_drift());
    assert_eq!(report.segment_drift.len(), 1);
    assert_eq!(
        report.segment_drift[0].redis.available - report.segment_drift[0].ledger.available,
        1
    );
    assert!(report.render().contains("available"), "{}", report.render());
    let repaired = reconcile(&inv, &ledger, "settlement", true).await?;
    assert_eq!(
        repaired.segment_drift[0].repair,
        Some(Ok(())),
        "{}",
        repaired.render()
    );
    assert!(
        !reconcile(&inv, &ledger, "settlement", false)
            .await?
            .has_drift()
    );

    // The other direction (Redis shows less than the ledger) could be an event the ledger
    // never saw: reported, never "repaired" into extra stock.
    redis::cmd("HINCRBY")
        .arg(&key)
        .arg(format!("a{}", seg.segment))
        .arg(-2)
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("HINCRBY")
        .arg(&key)
        .arg(format!("r{}", seg.segment))
        .arg(2)
        .query_async::<()>(&mut conn)
        .await?;
    let refused = reconcile(&inv, &ledger, "settlement", true).await?;
    assert!(
        matches!(refused.segment_drift[0].repair, Some(Err(_))),
        "{}",
        refused.render()
    );
    assert!(
        reconcile(&inv, &ledger, "settlement", false)
            .await?
            .has_drift()
    );
    Ok(())
}
on_both!(reconcile_finds_drift_and_repairs_only_the_safe_direction);

async fn trims_only_what_is_acknowledged_and_committed(env: Env) -> Result<()> {
    // Three events in partition 0; another consumer holds the second one unacknowledged.
    let load = [
        ("type", "sku.loaded"),
        ("at", "1"),
        ("sku", "t"),
        ("stock", "5"),
        ("segs", "1"),
        ("segments", "0:5"),
        ("price", "1"),
        ("currency", "EUR"),
        ("start", "0"),
        ("end", "9"),
        ("limit", "0"),
        ("ttl", "1000"),
        ("paywin", "1000"),
    ];
    let rsv = |id: &'static str| {
        [
            ("type", "reservation.created"),
            ("at", "2"),
            ("sku", "t"),
            ("rsv", id),
            ("seg", "0"),
            ("qty", "1"),
            ("buyer", "b"),
            ("expires", "99"),
        ]
    };
    let mut consumer = env.consumer(env.config("c1")).await?;
    env.xadd(0, &load).await?;
    let mut conn = env.conn().await?;
    let key = env.schema.events(flashcart_core::Partition::new(0));
    // "other" reads (and so holds) the load entry without ever acknowledging it.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("settlement")
        .arg("other")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await?;
    env.xadd(0, &rsv("r1")).await?;
    env.xadd(0, &rsv("r2")).await?;
    assert_eq!(drain(&mut consumer).await?, 2);
    assert_eq!(
        consumer.trim().await?,
        0,
        "nothing below the held entry may go"
    );

    // Once the holder is gone and its entry claimed and settled, everything goes.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let recovered = consumer.recover().await?;
    assert_eq!((recovered.claimed, recovered.settled), (1, 1));
    assert_eq!(consumer.trim().await?, 3);
    let len: i64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await?;
    assert_eq!(len, 0);
    assert_eq!(consumer.ledger().counts().await?.applied_events, 3);
    Ok(())
}
on_both!(trims_only_what_is_acknowledged_and_committed);
