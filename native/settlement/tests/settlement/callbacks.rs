//! Payment callbacks as providers deliver them: the same event many times at once, two events
//! for one order in either order, and money that arrives after the order was cancelled. Each
//! order is paid at most once, every delivery gets a stable answer, the ledger records each
//! event once, nothing is sold twice and reconciliation is clean.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use flashcart_core::Now;
use flashcart_core::ids::OrderId;
use flashcart_core::inventory::{CancelReason, Order, PaymentOutcome};
use flashcart_inventory::NativeInventory;
use flashcart_settlement::Metrics;
use flashcart_settlement::reconcile::reconcile;
use flashcart_settlement::timers::Timers;

use crate::support::{Env, T0, drain, on_both, order_req, payment, reserve_req, spec, unique_sku};

/// How many times a provider delivers the same event at once.
fn deliveries() -> u32 {
    8 * flashcart_testkit::fault_scale()
}

async fn order_one_unit(
    inv: &NativeInventory,
    sku: &flashcart_core::ids::SkuId,
    buyer: &str,
    at: u64,
) -> Result<Order> {
    let r = inv
        .reserve(
            &reserve_req(sku, buyer, 1, &format!("r-{buyer}")),
            Now::At(at),
        )
        .await
        .map_err(|e| anyhow!("reserve: {e}"))?;
    inv.create_order(&order_req(&r.id, buyer, &format!("o-{buyer}")), Now::At(at))
        .await
        .map_err(|e| anyhow!("order: {e}"))
}

async fn deliver(
    inv: &NativeInventory,
    order: &Order,
    event: &str,
    at: u64,
) -> Result<(PaymentOutcome, bool)> {
    inv.apply_payment(&payment(&order.id, event, order.amount), Now::At(at))
        .await
        .map_err(|e| anyhow!("payment {event}: {e}"))
}

async fn state(ledger: &flashcart_settlement::Ledger, order: &OrderId) -> Result<Option<String>> {
    Ok(ledger.order_state(&order.to_string()).await?)
}

async fn duplicate_reordered_and_late_callbacks_pay_each_order_once(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("psp");
    inv.load_sku(&spec(&sku, 20, 1_000, 2_000), Now::At(T0))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let t = T0 + 10;
    let ada = order_one_unit(&inv, &sku, "ada", t).await?;
    let bo = order_one_unit(&inv, &sku, "bo", t).await?;
    let cy = order_one_unit(&inv, &sku, "cy", t).await?;
    let di = order_one_unit(&inv, &sku, "di", t).await?;

    // Duplicates racing: one event delivered many times at once pays once; every other
    // delivery is answered as a replay of that decision.
    let racing: Vec<_> = (0..deliveries())
        .map(|_| {
            let (inv, ada) = (inv.clone(), ada.clone());
            tokio::spawn(async move { deliver(&inv, &ada, "evt-ada", t + 1).await })
        })
        .collect();
    let mut first_decisions = 0u32;
    for delivery in racing {
        let (outcome, replayed) = delivery.await??;
        assert_eq!(outcome, PaymentOutcome::Paid);
        first_decisions += u32::from(!replayed);
    }
    assert_eq!(
        first_decisions, 1,
        "one delivery decided, the rest replayed"
    );

    // Reordered: the provider's second event for bo arrives before its first. Whichever comes
    // first pays; the other is a recorded duplicate payment; each replays its own answer.
    assert_eq!(
        deliver(&inv, &bo, "evt-bo-2", t + 2).await?,
        (PaymentOutcome::Paid, false)
    );
    assert_eq!(
        deliver(&inv, &bo, "evt-bo-1", t + 3).await?,
        (PaymentOutcome::DuplicatePayment, false)
    );
    assert_eq!(
        deliver(&inv, &bo, "evt-bo-2", t + 4).await?,
        (PaymentOutcome::Paid, true)
    );
    assert_eq!(
        deliver(&inv, &bo, "evt-bo-1", t + 5).await?,
        (PaymentOutcome::DuplicatePayment, true)
    );

    // Late: di cancels, cy's payment deadline passes (settlement's timers cancel it); their
    // money arrives afterwards, twice each. The units went back at the cancel and stay there.
    inv.cancel_order(&di.id, CancelReason::Buyer, Now::At(t + 6))
        .await
        .map_err(|e| anyhow!("cancel: {e}"))?;
    let mut consumer = env.consumer(env.config("c1")).await?;
    drain(&mut consumer).await?;
    let ledger = consumer.ledger().clone();
    let timers = Timers::new(
        inv.clone(),
        ledger.clone(),
        Arc::new(Metrics::default()),
        100,
    );
    assert_eq!(timers.fire(Now::At(t + 5_000)).await?.cancelled, 1);
    for (order, event) in [(&cy, "evt-cy"), (&di, "evt-di")] {
        assert_eq!(
            deliver(&inv, order, event, t + 6_000).await?,
            (PaymentOutcome::PaidAfterCancel, false)
        );
        assert_eq!(
            deliver(&inv, order, event, t + 6_001).await?,
            (PaymentOutcome::PaidAfterCancel, true)
        );
    }

    let stock = inv.stock(&sku).await.map_err(|e| anyhow!("{e}"))?;
    assert!(stock.invariant_holds());
    assert_eq!(
        (stock.available(), stock.ordered(), stock.sold()),
        (18, 0, 2),
        "ada and bo bought one unit each; cy's and di's units are for sale again"
    );

    drain(&mut consumer).await?;
    assert_eq!(state(&ledger, &ada.id).await?.as_deref(), Some("paid"));
    assert_eq!(state(&ledger, &bo.id).await?.as_deref(), Some("paid"));
    for late in [&cy, &di] {
        assert_eq!(
            state(&ledger, &late.id).await?.as_deref(),
            Some("paid_after_cancel")
        );
        assert_eq!(
            ledger.refund_state(&late.id.to_string()).await?.as_deref(),
            Some("to_request")
        );
    }
    // One ledger row per distinct event, however often it was delivered: evt-ada, evt-bo-2,
    // evt-bo-1 (the rejected duplicate), evt-cy, evt-di.
    assert_eq!(ledger.counts().await?.payments, 5);
    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    Ok(())
}
on_both!(duplicate_reordered_and_late_callbacks_pay_each_order_once);
