//! The stream contract: every `XADD` of the function library writes an event the core's one
//! typed definition (`flashcart_core::event`) reads, field for field. Settlement reads the
//! streams through that same type, so what passes here is what the ledger gets.

use std::collections::BTreeSet;

use flashcart_core::event::{Body, EventKind, cancel_reason_name, release_reason_name};
use flashcart_core::inventory::{CancelReason, Now, ReleaseReason};
use flashcart_core::{KeySchema, Partition};

use crate::scenarios;
use crate::support::{Deployment, T0, reserve_req, spec, unique_sku};

/// The `XADD`s in the library source, each driven below: `fc_reserve` (via
/// `write_reservation`), `fc_release`, `fc_order_create`, `fc_payment` (four),
/// `fc_order_cancel`, `fc_refund`, `fc_load`, `fc_restore_stream`. A new one must be driven
/// here too.
const XADD_SITES: usize = 11;

/// An event's kind and, for the kinds that carry one, its reason.
fn variant(body: &Body) -> (EventKind, &'static str) {
    let reason = match body {
        Body::ReservationReleased { reason, .. } => release_reason_name(*reason),
        Body::OrderCancelled { reason, .. } => cancel_reason_name(*reason),
        Body::PaymentRejected { reason, .. } => reason.as_str(),
        _ => "",
    };
    (body.kind(), reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_xadd_of_the_library_writes_an_event_the_core_reads() {
    let source = flashcart_core::library::source();
    assert_eq!(
        source.matches("redis.call('XADD'").count(),
        XADD_SITES,
        "a new XADD in the library: drive it in this test"
    );
    // Every literal event type the library writes is a kind of the core's (`restored` is
    // trimmed away in the same call: see below).
    for literal in source.split("'type', '").skip(1) {
        let name = &literal[..literal.find('\'').expect("closing quote")];
        assert!(
            EventKind::parse(name).is_some() || name == "restored",
            "the library writes event type {name:?}, which the core does not know"
        );
    }

    let d = Deployment::single();
    let inv = d.inventory().await;
    // Load, reserve at home and elsewhere (fc_reserve_at), expiry, order, deadline cancel,
    // payments of every outcome, refunds.
    scenarios::fallback_and_resume(&d, &inv).await;
    scenarios::lifecycle(&d, &inv).await;
    // The reasons those leave out: a buyer's release and a buyer's cancel.
    let sku = unique_sku("contract");
    inv.load_sku(&spec(&sku, 4, Some(1), 0), Now::At(T0))
        .await
        .expect("load");
    let r = inv
        .reserve(&reserve_req(&sku, "gina", 1, "g1"), Now::At(T0 + 1))
        .await
        .expect("reserve");
    inv.release(&r.id, ReleaseReason::Cancelled, Now::At(T0 + 2))
        .await
        .expect("release");
    let r = inv
        .reserve(&reserve_req(&sku, "gina", 1, "g2"), Now::At(T0 + 3))
        .await
        .expect("reserve");
    let order = flashcart_core::inventory::OrderRequest {
        request: None,
        reservation: r.id.clone(),
        buyer: crate::support::buyer("gina"),
        key: crate::support::key("go2"),
        fingerprint: flashcart_core::fingerprint("", r.id.to_string().as_bytes()),
    };
    let o = inv
        .create_order(&order, Now::At(T0 + 4))
        .await
        .expect("order");
    inv.cancel_order(&o.id, CancelReason::Buyer, Now::At(T0 + 5))
        .await
        .expect("cancel");

    // Every entry parses and writes back to its fields (`Deployment::events` checks each);
    // together they are every kind, with every reason.
    let seen: BTreeSet<_> = d.events().iter().map(|e| variant(&e.event.body)).collect();
    let mut expected = BTreeSet::new();
    for kind in EventKind::ALL {
        match kind {
            EventKind::ReservationReleased => {
                for r in [ReleaseReason::Expired, ReleaseReason::Cancelled] {
                    expected.insert((kind, release_reason_name(r)));
                }
            }
            EventKind::OrderCancelled => {
                for r in [CancelReason::Deadline, CancelReason::Buyer] {
                    expected.insert((kind, cancel_reason_name(r)));
                }
            }
            EventKind::PaymentRejected => {
                expected.insert((kind, "amount_mismatch"));
                expected.insert((kind, "duplicate_payment"));
            }
            _ => {
                expected.insert((kind, ""));
            }
        }
    }
    assert_eq!(seen, expected);
    // A reservation written by fc_reserve_at: in a partition other than its buyer's home.
    let schema = KeySchema::default();
    assert!(
        d.events().iter().any(|e| match &e.event.body {
            Body::ReservationCreated { buyer, .. } =>
                schema.home_of_buyer(&crate::support::buyer(buyer)) != e.partition,
            _ => false,
        }),
        "no reservation came from a fallback step"
    );

    // fc_restore_stream's XADD makes a stream whose last id is the ledger's, and trims its
    // one entry in the same command: it leaves nothing for settlement to read.
    let p = Partition::new(0);
    inv.guard(p, true).await.expect("guard");
    let mut conn = d.servers()[0].connection().expect("connect");
    let _: () = redis::cmd("DEL")
        .arg(schema.events(p))
        .query(&mut conn)
        .expect("del");
    inv.restore_stream(p, &format!("{}-0", T0 + 100))
        .await
        .expect("restore stream");
    let len: u64 = redis::cmd("XLEN")
        .arg(schema.events(p))
        .query(&mut conn)
        .expect("xlen");
    assert_eq!(len, 0, "the restored stream holds no entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_behind_a_decision_rides_on_its_event() {
    use flashcart_core::ids::RequestId;
    use flashcart_core::inventory::{OrderRequest, PaymentNotice};

    let d = Deployment::single();
    let inv = d.inventory().await;
    let schema = KeySchema::default();
    let id = |name: &str| RequestId::parse(name).expect("request id");
    let sku = unique_sku("traced");
    // 2 units in one segment, in one partition: a buyer homed elsewhere reserves through
    // fc_reserve_at, one homed there through fc_reserve itself.
    inv.load_sku_for(&spec(&sku, 2, Some(1), 0), Now::At(T0), Some(&id("r-load")))
        .await
        .expect("load");
    let there = schema.sku_partitions(&sku, 1)[0];
    let via = |name: &str, request: &str| {
        let mut req = reserve_req(&sku, name, 1, &format!("k-{request}"));
        req.request = Some(id(request));
        req
    };
    let outsider = crate::scenarios::buyer_homed(there, false);
    let insider = crate::scenarios::buyer_homed(there, true);
    let far = inv
        .reserve(&via(&outsider, "r-far"), Now::At(T0 + 1))
        .await
        .expect("reserve elsewhere");
    let near = inv
        .reserve(&via(&insider, "r-near"), Now::At(T0 + 2))
        .await
        .expect("reserve at home");
    let order =
        |rsv: &flashcart_core::ids::ReservationId, buyer: &str, request: &str| OrderRequest {
            request: Some(id(request)),
            reservation: rsv.clone(),
            buyer: crate::support::buyer(buyer),
            key: crate::support::key(&format!("o-{request}")),
            fingerprint: flashcart_core::fingerprint("", rsv.to_string().as_bytes()),
        };
    let paid = inv
        .create_order(&order(&far.id, &outsider, "r-order-far"), Now::At(T0 + 3))
        .await
        .expect("order");
    let unpaid = inv
        .create_order(&order(&near.id, &insider, "r-order-near"), Now::At(T0 + 4))
        .await
        .expect("order");
    let notice = PaymentNotice {
        request: Some(id("r-pay")),
        order: paid.id.clone(),
        event_id: flashcart_core::ids::PspEventId::parse("evt-traced").expect("event id"),
        amount: 2_500,
        currency: flashcart_core::ids::Currency::parse("EUR").expect("currency"),
    };
    inv.apply_payment(&notice, Now::At(T0 + 5))
        .await
        .expect("payment");
    inv.cancel_order_for(
        &unpaid.id,
        CancelReason::Buyer,
        Now::At(T0 + 6),
        Some(&id("r-cancel")),
    )
    .await
    .expect("cancel");
    let events: Vec<_> = d
        .events()
        .into_iter()
        .filter(|e| e.event.sku == sku.as_str())
        .collect();
    let named = |request: &str| -> Vec<(EventKind, Option<String>)> {
        events
            .iter()
            .filter(|e| e.event.request.as_deref() == Some(request))
            .map(|e| {
                (
                    e.event.body.kind(),
                    e.event.body.subject().map(str::to_owned),
                )
            })
            .collect()
    };
    assert_eq!(
        named("r-load").len(),
        schema.partitions().count(),
        "every partition's sku.loaded names the admin's request"
    );
    assert!(
        named("r-load")
            .iter()
            .all(|(kind, _)| *kind == EventKind::SkuLoaded)
    );
    let far_id = Some(far.id.to_string());
    let near_id = Some(near.id.to_string());
    assert_eq!(
        named("r-far"),
        [(EventKind::ReservationCreated, far_id.clone())]
    );
    assert_eq!(
        named("r-near"),
        [(EventKind::ReservationCreated, near_id.clone())]
    );
    assert_eq!(
        named("r-order-far"),
        [(EventKind::OrderCreated, Some(paid.id.to_string()))]
    );
    assert_eq!(
        named("r-order-near"),
        [(EventKind::OrderCreated, Some(unpaid.id.to_string()))]
    );
    assert_eq!(
        named("r-pay"),
        [(EventKind::OrderPaid, Some(paid.id.to_string()))]
    );
    assert_eq!(
        named("r-cancel"),
        [(EventKind::OrderCancelled, Some(unpaid.id.to_string()))]
    );
    assert_eq!(
        events.iter().filter(|e| e.event.request.is_none()).count(),
        0,
        "every event of this SKU was decided by a request"
    );
}
