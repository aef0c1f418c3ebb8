//! Expiry and deadlines through the core's functions: stock goes back; a later payment for a
//! cancelled order ends `paid_after_cancel` with a refund request; two timer runners never
//! release anything twice.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use flashcart_core::Now;
use flashcart_core::inventory::PaymentOutcome;
use flashcart_settlement::Metrics;
use flashcart_settlement::reconcile::reconcile;
use flashcart_settlement::timers::{Fired, Timers};

use crate::support::{Env, T0, drain, on_both, order_req, payment, reserve_req, spec, unique_sku};

async fn expiry_deadline_and_paid_after_cancel(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("timer");
    inv.load_sku(
        &flashcart_core::sku::SkuSpec {
            segments: Some(1),
            ..spec(&sku, 20, 1_000, 2_000)
        },
        Now::At(T0),
    )
    .await
    .map_err(|e| anyhow!("{e}"))?;
    let t = T0 + 10;
    // A reserves and walks away; B orders and never pays in time; C pays.
    let a = inv
        .reserve(&reserve_req(&sku, "alice", 2, "ka"), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let b = inv
        .reserve(&reserve_req(&sku, "bob", 3, "kb"), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let b_order = inv
        .create_order(&order_req(&b.id, "bob", "ob"), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let c = inv
        .reserve(&reserve_req(&sku, "carol", 1, "kc"), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let c_order = inv
        .create_order(&order_req(&c.id, "carol", "oc"), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    inv.apply_payment(&payment(&c_order.id, "pay-c", c_order.amount), Now::At(t))
        .await
        .map_err(|e| anyhow!("{e}"))?;

    let mut consumer = env.consumer(env.config("c1")).await?;
    drain(&mut consumer).await?;
    let ledger = consumer.ledger().clone();
    let metrics = Arc::new(Metrics::default());
    // Two timer runners, as two settle processes would have.
    let first = Timers::new(inv.clone(), ledger.clone(), metrics.clone(), 100);
    let second = Timers::new(env.inventory().await?, ledger.clone(), metrics.clone(), 100);

    // Nothing is due before the expiry.
    assert_eq!(first.fire(Now::At(t + 500)).await?, Fired::default());
    let later = Now::At(t + 5_000);
    let (x, y) = tokio::join!(first.fire(later), second.fire(later));
    let (x, y) = (x?, y?);
    assert_eq!(x.expired + y.expired, 1, "one release: {x:?} {y:?}");
    assert_eq!(x.cancelled + y.cancelled, 1, "one cancel: {x:?} {y:?}");
    let stock = inv.stock(&sku).await.map_err(|e| anyhow!("{e}"))?;
    assert_eq!(
        (
            stock.available(),
            stock.reserved(),
            stock.ordered(),
            stock.sold()
        ),
        (19, 0, 0, 1)
    );

    drain(&mut consumer).await?;
    assert_eq!(
        ledger
            .reservation_state(&a.id.to_string())
            .await?
            .as_deref(),
        Some("expired")
    );
    assert_eq!(
        ledger
            .order_state(&b_order.id.to_string())
            .await?
            .as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        ledger
            .order_state(&c_order.id.to_string())
            .await?
            .as_deref(),
        Some("paid")
    );

    // Bob's money arrives after the cancel.
    let (outcome, _) = inv
        .apply_payment(
            &payment(&b_order.id, "pay-b", b_order.amount),
            Now::At(t + 6_000),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    assert_eq!(outcome, PaymentOutcome::PaidAfterCancel);
    drain(&mut consumer).await?;
    let bob = b_order.id.to_string();
    assert_eq!(
        ledger.order_state(&bob).await?.as_deref(),
        Some("paid_after_cancel")
    );
    assert_eq!(
        ledger.refund_state(&bob).await?.as_deref(),
        Some("to_request")
    );

    // The timers ask the core for the refund; its event comes back through the stream.
    let (x, y) = tokio::join!(
        first.fire(Now::At(t + 7_000)),
        second.fire(Now::At(t + 7_000))
    );
    assert_eq!(x?.refunds + y?.refunds, 1);
    drain(&mut consumer).await?;
    assert_eq!(
        ledger.order_state(&bob).await?.as_deref(),
        Some("refund_pending")
    );
    assert_eq!(
        ledger.refund_state(&bob).await?.as_deref(),
        Some("requested")
    );
    assert_eq!(
        first.fire(Now::At(t + 8_000)).await?,
        Fired::default(),
        "nothing left to do"
    );
    let stock = inv.stock(&sku).await.map_err(|e| anyhow!("{e}"))?;
    assert_eq!(stock.available(), 19, "a late payment takes no stock");

    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    Ok(())
}
on_both!(expiry_deadline_and_paid_after_cancel);
