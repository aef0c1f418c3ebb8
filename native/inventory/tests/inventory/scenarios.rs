//! Scenarios that run against a single server (one test each, below) and against the
//! cluster (all of them, in `cluster.rs`).

use flashcart_core::event::EventKind;
use flashcart_core::ids::{Currency, PspEventId, Quantity, SkuId};
use flashcart_core::inventory::{
    CancelOutcome, CancelReason, HomeStep, LoadOutcome, Now, OrderRequest, PaymentNotice,
    PaymentOutcome, RateLimit, ReleaseOutcome, ReleaseReason, Search, StockHint,
};
use flashcart_core::order::OrderState;
use flashcart_core::{KeySchema, Partition, Rejection, Settings};
use flashcart_inventory::NativeInventory;

use crate::support::{Deployment, T0, buyer, key, reserve_req, spec, unique_sku};

fn order_req(
    rsv: &flashcart_core::ids::ReservationId,
    buyer_name: &str,
    key_name: &str,
) -> OrderRequest {
    OrderRequest {
        request: None,
        reservation: rsv.clone(),
        buyer: buyer(buyer_name),
        key: key(key_name),
        fingerprint: flashcart_core::fingerprint("", rsv.to_string().as_bytes()),
    }
}

fn payment(
    order: &flashcart_core::ids::OrderId,
    event: &str,
    amount: u64,
    currency: &str,
) -> PaymentNotice {
    PaymentNotice {
        request: None,
        order: order.clone(),
        event_id: PspEventId::parse(event).expect("event id"),
        amount,
        currency: Currency::parse(currency).expect("currency"),
    }
}

/// A buyer name whose home partition is (or is not) `p`.
pub(crate) fn buyer_homed(p: Partition, at_home: bool) -> String {
    let schema = KeySchema::default();
    (0..)
        .map(|i| format!("buyer-{i}"))
        .find(|b| (schema.home_of_buyer(&buyer(b)) == p) == at_home)
        .expect("some buyer")
}

async fn assert_invariant(inv: &NativeInventory, sku: &SkuId) {
    let levels = inv.stock(sku).await.expect("stock");
    assert!(levels.invariant_holds(), "invariant broken: {levels:#?}");
}

/// The whole happy path: load, reserve, order, pay; levels, states and events agree.
pub(crate) async fn flow(d: &Deployment, inv: &NativeInventory) {
    let sku = unique_sku("flow");
    assert_eq!(
        inv.load_sku(&spec(&sku, 10, Some(4), 0), Now::At(T0)).await,
        Ok(LoadOutcome::Loaded)
    );
    assert_eq!(
        inv.load_sku(&spec(&sku, 10, Some(4), 0), Now::At(T0)).await,
        Ok(LoadOutcome::Unchanged)
    );
    assert_eq!(
        inv.load_sku(&spec(&sku, 11, Some(4), 0), Now::At(T0)).await,
        Err(Rejection::SkuConflict)
    );

    let rsv = inv
        .reserve(&reserve_req(&sku, "alice", 2, "k1"), Now::At(T0 + 1))
        .await
        .expect("reserve");
    assert!(!rsv.replayed);
    assert_eq!(rsv.expires_at, T0 + 1 + 60_000);
    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!((levels.available(), levels.reserved()), (8, 2));

    let order = inv
        .create_order(&order_req(&rsv.id, "alice", "o1"), Now::At(T0 + 2))
        .await
        .expect("order");
    assert_eq!(order.state, OrderState::PendingPayment);
    assert_eq!(
        (order.amount, order.currency.as_str(), order.quantity),
        (5_000, "EUR", 2)
    );
    assert_eq!(order.payment_deadline, T0 + 2 + 120_000);
    let again = inv
        .create_order(&order_req(&rsv.id, "alice", "o1"), Now::At(T0 + 3))
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(again.id, order.id);
    assert_eq!(
        inv.create_order(&order_req(&rsv.id, "alice", "o2"), Now::At(T0 + 3))
            .await,
        Err(Rejection::AlreadyOrdered {
            order_id: order.id.to_string()
        })
    );
    assert_eq!(
        inv.create_order(&order_req(&rsv.id, "mallory", "o3"), Now::At(T0 + 3))
            .await,
        Err(Rejection::UnknownReservation)
    );

    let (outcome, replayed) = inv
        .apply_payment(&payment(&order.id, "evt_1", 5_000, "EUR"), Now::At(T0 + 4))
        .await
        .expect("pay");
    assert_eq!((outcome, replayed), (PaymentOutcome::Paid, false));
    let (outcome, replayed) = inv
        .apply_payment(&payment(&order.id, "evt_1", 5_000, "EUR"), Now::At(T0 + 5))
        .await
        .expect("replay");
    assert_eq!((outcome, replayed), (PaymentOutcome::Paid, true));
    assert_eq!(
        inv.order(&order.id).await.expect("order").state,
        OrderState::Paid
    );

    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!(
        (
            levels.available(),
            levels.reserved(),
            levels.ordered(),
            levels.sold()
        ),
        (8, 0, 0, 2)
    );
    assert!(levels.invariant_holds());

    for kind in [
        EventKind::ReservationCreated,
        EventKind::OrderCreated,
        EventKind::OrderPaid,
    ] {
        assert_eq!(d.events_of(&sku, kind).len(), 1, "{kind:?}");
    }
    assert_eq!(
        d.events_of(&sku, EventKind::SkuLoaded).len(),
        16,
        "one per partition"
    );
}

/// Same key + same body replays; same key + other body is refused; limits hold.
pub(crate) async fn idempotency_and_limits(d: &Deployment, inv: &NativeInventory) {
    let sku = unique_sku("idem");
    inv.load_sku(&spec(&sku, 50, Some(16), 3), Now::At(T0))
        .await
        .expect("load");
    let first = inv
        .reserve(&reserve_req(&sku, "bob", 2, "same"), Now::At(T0 + 1))
        .await
        .expect("first");
    let replay = inv
        .reserve(&reserve_req(&sku, "bob", 2, "same"), Now::At(T0 + 2))
        .await
        .expect("replay");
    assert!(replay.replayed);
    assert_eq!(
        (replay.id.clone(), replay.expires_at),
        (first.id.clone(), first.expires_at)
    );
    assert_eq!(
        inv.reserve(&reserve_req(&sku, "bob", 1, "same"), Now::At(T0 + 3))
            .await,
        Err(Rejection::IdempotencyMismatch)
    );
    assert_eq!(inv.stock(&sku).await.expect("stock").reserved(), 2);
    assert_eq!(d.events_of(&sku, EventKind::ReservationCreated).len(), 1);

    // Limit 3: one more unit is fine, then the buyer is at the limit; the refusal is a
    // decision and replays as such.
    inv.reserve(&reserve_req(&sku, "bob", 1, "second"), Now::At(T0 + 4))
        .await
        .expect("within limit");
    assert_eq!(
        inv.reserve(&reserve_req(&sku, "bob", 1, "third"), Now::At(T0 + 5))
            .await,
        Err(Rejection::LimitReached { remaining: 0 })
    );
    assert_eq!(
        inv.reserve(&reserve_req(&sku, "bob", 1, "third"), Now::At(T0 + 6))
            .await,
        Err(Rejection::LimitReached { remaining: 0 })
    );
    // Another buyer is not affected.
    inv.reserve(&reserve_req(&sku, "carol", 3, "c1"), Now::At(T0 + 7))
        .await
        .expect("carol");
    assert_invariant(inv, &sku).await;
}

/// Inputs the inventory refuses change nothing in Redis, byte for byte, also when every
/// reserve draws from the buyer's token bucket: a refusal before the decision takes no token.
pub(crate) async fn rejections_change_nothing(d: &Deployment, inv: &NativeInventory) {
    let sku = unique_sku("reject");
    inv.load_sku(&spec(&sku, 5, Some(2), 0), Now::At(T0))
        .await
        .expect("load");
    inv.reserve(&reserve_req(&sku, "dave", 1, "taken"), Now::At(T0 + 1))
        .await
        .expect("reserve");
    let limited = d
        .inventory_with(Settings {
            buyer_rate: Some(RateLimit {
                capacity: 20,
                refill_per_second: 10,
            }),
            ..Settings::default()
        })
        .await;
    let before = d.snapshot();

    // Validation: refused before any Redis call.
    assert!(SkuId::parse("bad sku!").is_err());
    assert!(SkuId::parse(&"x".repeat(65)).is_err());
    assert!(Quantity::new(0).is_err() && Quantity::new(1_000_000).is_err());
    assert!(flashcart_core::ids::IdempotencyKey::parse("").is_err());
    assert!(flashcart_core::ids::IdempotencyKey::parse(&"k".repeat(256)).is_err());
    let mut bad_spec = spec(&sku, 0, None, 0);
    assert!(matches!(
        inv.load_sku(&bad_spec, Now::At(T0)).await,
        Err(Rejection::Invalid(_))
    ));
    bad_spec.stock = 5;
    bad_spec.sale_end = bad_spec.sale_start;
    // Each field in its range, but they disagree: 422, not 400.
    assert!(matches!(
        inv.load_sku(&bad_spec, Now::At(T0)).await,
        Err(Rejection::Inconsistent(_))
    ));

    // Refused by the library, after reading: nothing written, no token taken.
    let unknown = unique_sku("never-loaded");
    for inv in [inv, &limited] {
        assert_eq!(
            inv.reserve(&reserve_req(&unknown, "dave", 1, "u1"), Now::At(T0 + 2))
                .await,
            Err(Rejection::UnknownSku)
        );
        assert_eq!(
            inv.reserve(&reserve_req(&sku, "dave", 1, "early"), Now::At(T0 - 1))
                .await,
            Err(Rejection::NotOnSale { starts_at: T0 })
        );
        assert_eq!(
            inv.reserve(
                &reserve_req(&sku, "dave", 1, "late"),
                Now::At(T0 + 3_600_000)
            )
            .await,
            Err(Rejection::SaleEnded)
        );
        assert_eq!(
            inv.reserve(&reserve_req(&sku, "dave", 2, "taken"), Now::At(T0 + 2))
                .await,
            Err(Rejection::IdempotencyMismatch)
        );
    }
    assert_eq!(inv.stock(&unknown).await, Err(Rejection::UnknownSku));
    let ghost_order =
        flashcart_core::ids::OrderId::parse(&format!("ord_03_0123456789abcdef_{sku}")).expect("id");
    assert_eq!(inv.order(&ghost_order).await, Err(Rejection::UnknownOrder));
    assert_eq!(
        inv.apply_payment(
            &payment(&ghost_order, "evt_ghost", 1, "EUR"),
            Now::At(T0 + 2)
        )
        .await,
        Err(Rejection::UnknownOrder)
    );
    assert_eq!(
        inv.cancel_order(&ghost_order, CancelReason::Buyer, Now::At(T0 + 2))
            .await,
        Err(Rejection::UnknownOrder)
    );
    let far =
        flashcart_core::ids::OrderId::parse(&format!("ord_99_0123456789abcdef_{sku}")).expect("id");
    assert_eq!(inv.order(&far).await, Err(Rejection::UnknownOrder));

    assert_eq!(d.snapshot(), before, "a rejected request changed Redis");
}

/// A buyer whose home partition is empty is served from another partition; a search that
/// finds nothing gives the held limit back; a crashed fallback resumes without taking twice.
pub(crate) async fn fallback_and_resume(d: &Deployment, inv: &NativeInventory) {
    let schema = KeySchema::default();
    let sku = unique_sku("fallback");
    // 2 units in 2 segments: most buyers' home partitions hold none of this SKU.
    inv.load_sku(&spec(&sku, 2, Some(2), 1), Now::At(T0))
        .await
        .expect("load");
    let parts = schema.sku_partitions(&sku, 2);
    let outsider = buyer_homed(parts[0], false);
    let outsider = if schema.home_of_buyer(&buyer(&outsider)) == parts[1] {
        (0..)
            .map(|i| format!("o-{i}"))
            .find(|b| !parts.contains(&schema.home_of_buyer(&buyer(b))))
            .expect("outsider")
    } else {
        outsider
    };
    let r = inv
        .reserve(&reserve_req(&sku, &outsider, 1, "f1"), Now::At(T0 + 1))
        .await
        .expect("served from elsewhere");
    assert!(parts.contains(&r.id.partition()));
    let again = inv
        .reserve(&reserve_req(&sku, &outsider, 1, "f1"), Now::At(T0 + 2))
        .await
        .expect("replay");
    assert!(again.replayed && again.id == r.id);
    // Limit 1 holds across partitions.
    assert_eq!(
        inv.reserve(&reserve_req(&sku, &outsider, 1, "f2"), Now::At(T0 + 3))
            .await,
        Err(Rejection::LimitReached { remaining: 0 })
    );

    // Take the last unit, then an outsider's search finds nothing: sold out, limit returned.
    let other = (0..)
        .map(|i| format!("p-{i}"))
        .find(|b| !parts.contains(&schema.home_of_buyer(&buyer(b))))
        .expect("buyer");
    inv.reserve(&reserve_req(&sku, &other, 1, "g1"), Now::At(T0 + 4))
        .await
        .expect("last unit");
    let late = (0..)
        .map(|i| format!("q-{i}"))
        .find(|b| !parts.contains(&schema.home_of_buyer(&buyer(b))))
        .expect("buyer");
    assert_eq!(
        inv.reserve(&reserve_req(&sku, &late, 1, "h1"), Now::At(T0 + 5))
            .await,
        Err(Rejection::SoldOut)
    );
    assert_eq!(
        inv.reserve(&reserve_req(&sku, &late, 1, "h1"), Now::At(T0 + 6))
            .await,
        Err(Rejection::SoldOut),
        "replayed"
    );
    // The limit hold was given back: once stock returns, the late buyer can buy.
    inv.release(&r.id, ReleaseReason::Cancelled, Now::At(T0 + 7))
        .await
        .expect("release");
    let served = inv
        .reserve(&reserve_req(&sku, &late, 1, "h2"), Now::At(T0 + 8))
        .await
        .expect("after release");
    assert_eq!(served.id.partition(), r.id.partition());
    assert_invariant(inv, &sku).await;
    assert_eq!(d.events_of(&sku, EventKind::ReservationCreated).len(), 3);
}

/// A reserve that stopped after taking stock in another partition (its process died before
/// the last step) is resumed by a retry with the same key: it finds its own reservation and
/// never takes stock in a partition it had found empty, even once stock came back there.
pub(crate) async fn crashed_fallback_resumes(d: &Deployment, inv: &NativeInventory) {
    let schema = KeySchema::default();
    let sku = unique_sku("resume");
    inv.load_sku(&spec(&sku, 3, Some(3), 0), Now::At(T0))
        .await
        .expect("load");
    let parts = schema.sku_partitions(&sku, 3);
    let late = (0..)
        .map(|i| format!("r-{i}"))
        .find(|b| !parts.contains(&schema.home_of_buyer(&buyer(b))))
        .expect("buyer");
    let home = schema.home_of_buyer(&buyer(&late));
    let order = schema.fallback_order(schema.home_of_sku(&sku), 3, home);
    // Empty the first partition the late buyer will visit.
    let local = buyer_homed(order[0], true);
    let drained = inv
        .reserve(&reserve_req(&sku, &local, 1, "d1"), Now::At(T0 + 1))
        .await
        .expect("drain");
    assert_eq!(drained.id.partition(), order[0]);

    // The late buyer's reserve runs steps 1 and 2 and dies before step 3.
    let req = reserve_req(&sku, &late, 1, "late-1");
    let step = inv
        .reserve_at_home(&req, Now::At(T0 + 2))
        .await
        .expect("home step");
    assert_eq!(
        step,
        HomeStep::LookElsewhere {
            segments: 3,
            skip: vec![]
        }
    );
    assert_eq!(
        inv.reserve_in(&req, order[0], Now::At(T0 + 2)).await,
        Ok(Search::SoldOut)
    );
    let Search::Found(taken) = inv
        .reserve_in(&req, order[1], Now::At(T0 + 2))
        .await
        .expect("step 2")
    else {
        panic!("the second partition has a unit");
    };

    // Stock comes back where the dead reserve had found none.
    inv.release(&drained.id, ReleaseReason::Cancelled, Now::At(T0 + 3))
        .await
        .expect("release");
    // While the dead attempt's lease runs, a retry is told to wait.
    assert_eq!(
        inv.reserve(&req, Now::At(T0 + 4)).await,
        Err(Rejection::IdempotencyInFlight)
    );
    // After it, the retry resumes and lands on the same reservation.
    let resumed = inv
        .reserve(&req, Now::At(T0 + 2 + 5_001))
        .await
        .expect("resume");
    assert_eq!(resumed.id, taken.id);
    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!((levels.available(), levels.reserved()), (2, 1));
    assert!(levels.invariant_holds());
    let created: Vec<_> = d
        .events_of(&sku, EventKind::ReservationCreated)
        .into_iter()
        .filter(|e| e.fields["buyer"] == late)
        .collect();
    assert_eq!(created.len(), 1, "the late buyer's units were taken once");
}

/// Expiry, cancellation, late payment, refunds, mismatches and duplicates.
pub(crate) async fn lifecycle(d: &Deployment, inv: &NativeInventory) {
    let sku = unique_sku("life");
    inv.load_sku(&spec(&sku, 6, Some(3), 0), Now::At(T0))
        .await
        .expect("load");
    let r1 = inv
        .reserve(&reserve_req(&sku, "erin", 1, "e1"), Now::At(T0 + 1))
        .await
        .expect("r1");
    assert_eq!(
        inv.release(&r1.id, ReleaseReason::Expired, Now::At(T0 + 2))
            .await,
        Ok(ReleaseOutcome::NotDue {
            expires_at: r1.expires_at
        })
    );
    let p = r1.id.partition();
    // Timers are per partition, shared by every SKU there (other scenarios share the
    // cluster): look at this SKU's entries only.
    let due_here = |ids: Vec<flashcart_core::ids::ReservationId>| -> Vec<_> {
        ids.into_iter().filter(|id| id.sku() == &sku).collect()
    };
    assert_eq!(
        due_here(
            inv.due_reservations(p, Now::At(r1.expires_at), 100)
                .await
                .expect("due")
        ),
        vec![r1.id.clone()]
    );
    assert_eq!(
        inv.release(&r1.id, ReleaseReason::Expired, Now::At(r1.expires_at))
            .await,
        Ok(ReleaseOutcome::Released { quantity: 1 })
    );
    assert_eq!(
        inv.release(&r1.id, ReleaseReason::Expired, Now::At(r1.expires_at))
            .await,
        Ok(ReleaseOutcome::NotActive {
            state: "expired".into()
        })
    );
    assert!(
        due_here(
            inv.due_reservations(p, Now::At(r1.expires_at), 100)
                .await
                .expect("due")
        )
        .is_empty()
    );
    assert_eq!(
        inv.create_order(
            &order_req(&r1.id, "erin", "eo1"),
            Now::At(r1.expires_at + 1)
        )
        .await,
        Err(Rejection::ReservationGone)
    );

    // An order not paid in time is cancelled; a payment after that is paid_after_cancel.
    let r2 = inv
        .reserve(&reserve_req(&sku, "erin", 2, "e2"), Now::At(T0 + 10))
        .await
        .expect("r2");
    let o2 = inv
        .create_order(&order_req(&r2.id, "erin", "eo2"), Now::At(T0 + 11))
        .await
        .expect("o2");
    assert_eq!(
        inv.cancel_order(&o2.id, CancelReason::Deadline, Now::At(T0 + 12))
            .await,
        Ok(CancelOutcome::NotDue {
            deadline: o2.payment_deadline
        })
    );
    assert_eq!(
        inv.due_orders(p, Now::At(o2.payment_deadline), 100)
            .await
            .expect("due")
            .into_iter()
            .filter(|id| id.sku() == &sku)
            .collect::<Vec<_>>(),
        vec![o2.id.clone()]
    );
    assert_eq!(
        inv.cancel_order(&o2.id, CancelReason::Deadline, Now::At(o2.payment_deadline))
            .await,
        Ok(CancelOutcome::Cancelled)
    );
    assert_eq!(
        inv.cancel_order(&o2.id, CancelReason::Buyer, Now::At(o2.payment_deadline))
            .await,
        Err(Rejection::IllegalTransition {
            state: "cancelled".into()
        })
    );
    let (outcome, _) = inv
        .apply_payment(
            &payment(&o2.id, "evt_late", 5_000, "EUR"),
            Now::At(o2.payment_deadline + 1),
        )
        .await
        .expect("late");
    assert_eq!(outcome, PaymentOutcome::PaidAfterCancel);
    assert_eq!(
        inv.request_refund(&o2.id, Now::At(o2.payment_deadline + 2))
            .await,
        Ok(OrderState::RefundPending)
    );
    assert_eq!(
        inv.complete_refund(&o2.id, Now::At(o2.payment_deadline + 3))
            .await,
        Ok(OrderState::Refunded)
    );
    assert_eq!(
        inv.request_refund(&o2.id, Now::At(o2.payment_deadline + 4))
            .await,
        Err(Rejection::IllegalTransition {
            state: "refunded".into()
        })
    );

    // A wrong amount is rejected and recorded; the right one then pays; a second event is a
    // duplicate.
    let r3 = inv
        .reserve(&reserve_req(&sku, "frank", 1, "f3"), Now::At(T0 + 20))
        .await
        .expect("r3");
    let o3 = inv
        .create_order(&order_req(&r3.id, "frank", "fo3"), Now::At(T0 + 21))
        .await
        .expect("o3");
    let (outcome, _) = inv
        .apply_payment(&payment(&o3.id, "evt_a", 1, "EUR"), Now::At(T0 + 22))
        .await
        .expect("mismatch");
    assert_eq!(outcome, PaymentOutcome::AmountMismatch);
    let (outcome, _) = inv
        .apply_payment(&payment(&o3.id, "evt_b", 2_500, "USD"), Now::At(T0 + 22))
        .await
        .expect("mismatch");
    assert_eq!(outcome, PaymentOutcome::AmountMismatch);
    assert_eq!(
        inv.order(&o3.id).await.expect("o3").state,
        OrderState::PendingPayment
    );
    let (outcome, _) = inv
        .apply_payment(&payment(&o3.id, "evt_c", 2_500, "EUR"), Now::At(T0 + 23))
        .await
        .expect("pay");
    assert_eq!(outcome, PaymentOutcome::Paid);
    let (outcome, _) = inv
        .apply_payment(&payment(&o3.id, "evt_d", 2_500, "EUR"), Now::At(T0 + 24))
        .await
        .expect("dup");
    assert_eq!(outcome, PaymentOutcome::DuplicatePayment);

    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!(
        (
            levels.available(),
            levels.reserved(),
            levels.ordered(),
            levels.sold()
        ),
        (5, 0, 0, 1)
    );
    assert!(levels.invariant_holds());
    assert_eq!(d.events_of(&sku, EventKind::PaymentRejected).len(), 3);
    assert_eq!(d.events_of(&sku, EventKind::ReservationReleased).len(), 1);
    assert_eq!(d.events_of(&sku, EventKind::OrderCancelled).len(), 1);
    assert_eq!(d.events_of(&sku, EventKind::OrderPaidAfterCancel).len(), 1);
    assert_eq!(d.events_of(&sku, EventKind::OrderRefunded).len(), 1);
}

/// The buyer's token bucket is part of the reserve: a burst passes, the next reserve is
/// refused with a retry time and changes nothing, a replay takes no token, another buyer has
/// a bucket of its own, tokens come back; with the limiter off nobody is refused.
pub(crate) async fn rate_limit(d: &Deployment, inv: &NativeInventory) {
    let limited = d
        .inventory_with(Settings {
            buyer_rate: Some(RateLimit {
                capacity: 3,
                refill_per_second: 10,
            }),
            ..Settings::default()
        })
        .await;
    let sku = unique_sku("bucket");
    limited
        .load_sku(&spec(&sku, 40, Some(4), 0), Now::At(T0))
        .await
        .expect("load");
    let b = format!("{sku}-b");
    for i in 0..3 {
        limited
            .reserve(&reserve_req(&sku, &b, 1, &format!("r{i}")), Now::At(T0))
            .await
            .expect("within the burst");
    }
    let before = d.snapshot();
    assert_eq!(
        limited
            .reserve(&reserve_req(&sku, &b, 1, "r3"), Now::At(T0))
            .await,
        Err(Rejection::RateLimited {
            retry_after_ms: 100
        })
    );
    assert_eq!(d.snapshot(), before, "a refused reserve changed Redis");
    let replay = limited
        .reserve(&reserve_req(&sku, &b, 1, "r0"), Now::At(T0))
        .await
        .expect("a replay takes no token");
    assert!(replay.replayed);
    limited
        .reserve(
            &reserve_req(&sku, &format!("{sku}-c"), 1, "c0"),
            Now::At(T0),
        )
        .await
        .expect("another buyer");
    limited
        .reserve(&reserve_req(&sku, &b, 1, "r3"), Now::At(T0 + 100))
        .await
        .expect("a token is back after 100 ms");
    for i in 0..5 {
        inv.reserve(
            &reserve_req(&sku, &b, 1, &format!("off{i}")),
            Now::At(T0 + 100),
        )
        .await
        .expect("the limiter is off");
    }
    assert_invariant(inv, &sku).await;
}

/// With a hint of which partitions are empty, a reserve whose home partition is short goes
/// straight to one with stock and, with the edge's settings, ends there: two calls. A retry
/// resumes at once and finds the same reservation. When every other partition is believed
/// empty, the home partition answers alone: one call.
pub(crate) async fn hinted_reserve_goes_straight_to_stock(d: &Deployment, _inv: &NativeInventory) {
    let edge = d.inventory_with(Settings::edge(None)).await;
    let schema = KeySchema::default();
    let sku = unique_sku("hinted");
    edge.load_sku(&spec(&sku, 2, Some(2), 0), Now::At(T0))
        .await
        .expect("load");
    let parts = schema.sku_partitions(&sku, 2);
    let outsider = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|b| !parts.contains(&schema.home_of_buyer(&buyer(b))))
            .expect("buyer")
    };

    // No hint: the search starts with the SKU's first partition, which has a unit.
    let first = outsider("h1");
    let calls = d.function_calls();
    let r = edge
        .reserve_hinted(
            &reserve_req(&sku, &first, 1, "k"),
            &StockHint::default(),
            Now::At(T0 + 1),
        )
        .await;
    assert_eq!(
        r.result.expect("reserved").id.partition(),
        parts[0],
        "the first partition in the fallback order"
    );
    assert_eq!(
        d.function_calls() - calls,
        2,
        "home, then where the unit was"
    );
    assert_eq!(r.segments, Some(2));
    assert!(r.seen.contains(&(parts[0], 0)), "{:?}", r.seen);

    // parts[0] is known empty now: the next buyer goes straight to parts[1].
    let second = outsider("h2");
    let hint = StockHint {
        segments: Some(2),
        empty: [parts[0]].into(),
    };
    let calls = d.function_calls();
    let r = edge
        .reserve_hinted(&reserve_req(&sku, &second, 1, "k"), &hint, Now::At(T0 + 2))
        .await;
    assert_eq!(r.result.expect("reserved").id.partition(), parts[1]);
    assert_eq!(d.function_calls() - calls, 2);
    let again = edge
        .reserve(&reserve_req(&sku, &second, 1, "k"), Now::At(T0 + 3))
        .await
        .expect("replay");
    assert!(again.replayed && again.id.partition() == parts[1]);

    // Every partition believed empty: the home partition decides sold out alone.
    let third = outsider("h3");
    let all = StockHint {
        segments: Some(2),
        empty: parts.iter().copied().collect(),
    };
    let calls = d.function_calls();
    assert_eq!(
        edge.reserve_hinted(&reserve_req(&sku, &third, 1, "k"), &all, Now::At(T0 + 4))
            .await
            .result,
        Err(Rejection::SoldOut)
    );
    assert_eq!(d.function_calls() - calls, 1);
    assert_eq!(
        edge.reserve(&reserve_req(&sku, &third, 1, "k"), Now::At(T0 + 5))
            .await,
        Err(Rejection::SoldOut),
        "the decision is stored"
    );
    assert_invariant(&edge, &sku).await;
    assert_eq!(d.events_of(&sku, EventKind::ReservationCreated).len(), 2);
}

macro_rules! on_single_server {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let d = crate::support::Deployment::single();
                    let inv = d.inventory().await;
                    super::$name(&d, &inv).await;
                }
            )*
        }
    };
}

on_single_server!(
    flow,
    idempotency_and_limits,
    rejections_change_nothing,
    fallback_and_resume,
    crashed_fallback_resumes,
    lifecycle,
    rate_limit,
    hinted_reserve_goes_straight_to_stock,
);
