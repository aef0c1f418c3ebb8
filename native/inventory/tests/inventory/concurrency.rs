//! A flash sale in miniature: 10 000 concurrent reserve attempts for 1 unit each, over 8
//! connections, against 100 units in 16 segments.

use std::collections::BTreeSet;
use std::sync::Arc;

use flashcart_core::Rejection;
use flashcart_core::event::EventKind;
use flashcart_core::inventory::Now;

use crate::support::{Deployment, T0, reserve_req, spec, unique_sku};

const ATTEMPTS: usize = 10_000;
const UNITS: u64 = 100;
const CONNECTIONS: usize = 8;

pub(crate) async fn ten_thousand_buyers_for_a_hundred_units(d: &Deployment) {
    let sku = unique_sku("rush");
    // The first opens with the library check; the others are plain extra connections.
    let mut inventories = vec![Arc::new(d.inventory().await)];
    for _ in 1..CONNECTIONS {
        inventories.push(Arc::new(d.extra_inventory().await));
    }
    inventories[0]
        .load_sku(&spec(&sku, UNITS, Some(16), 0), Now::At(T0))
        .await
        .expect("load");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..ATTEMPTS {
        let inv = Arc::clone(&inventories[i % CONNECTIONS]);
        let req = reserve_req(&sku, &format!("buyer-{i}"), 1, &format!("key-{i}"));
        tasks.spawn(async move { inv.reserve(&req, Now::At(T0 + 1)).await });
    }
    let (mut ok, mut sold_out) = (Vec::new(), 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(r) => ok.push(r.id),
            Err(Rejection::SoldOut | Rejection::Insufficient) => sold_out += 1,
            Err(other) => panic!("unexpected answer: {other:?}"),
        }
    }
    assert_eq!(ok.len(), UNITS as usize, "exactly the stock is reserved");
    assert_eq!(sold_out, ATTEMPTS - UNITS as usize);
    assert_eq!(
        ok.iter().collect::<BTreeSet<_>>().len(),
        ok.len(),
        "distinct reservations"
    );

    let levels = inventories[0].stock(&sku).await.expect("stock");
    assert_eq!((levels.available(), levels.reserved()), (0, UNITS));
    assert!(levels.invariant_holds(), "{levels:#?}");

    let events = d.events_of(&sku, EventKind::ReservationCreated);
    let ids: BTreeSet<String> = events.iter().map(|e| e.fields["rsv"].clone()).collect();
    assert_eq!(events.len(), UNITS as usize, "one event per reservation");
    assert_eq!(
        ids,
        ok.iter().map(ToString::to_string).collect(),
        "the events are the reservations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_buyers_on_a_single_server() {
    let d = Deployment::single();
    ten_thousand_buyers_for_a_hundred_units(&d).await;
}
