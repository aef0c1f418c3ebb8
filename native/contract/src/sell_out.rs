//! What a sell-out costs Redis, counted with `INFO commandstats`: the last units of a small
//! SKU spread over partitions, then a crowd that keeps asking after the last one is gone.

use futures::future::join_all;

use crate::node::{
    Kind, Node, NodeClock, NodeOptions, deduct_req, function_calls, load, problem_type,
};

/// Units and segments of the small SKU: one unit in each of 8 partitions.
const UNITS: u64 = 8;

/// Sells 8 units spread over 8 partitions to buyers one at a time, then keeps selling: on
/// average each deduct costs at most 2 function calls while the last units are found (the
/// node learns from every reply which partitions are empty and sends the next deduct straight
/// to one with stock), and once the SKU is sold out the deducts cost none.
pub async fn last_units_cost_two_calls_per_deduct(kind: Kind) {
    let options = NodeOptions {
        sold_out_ttl_ms: 60_000,
        ..NodeOptions::default()
    };
    let n = Node::start(kind, options).await;
    assert_eq!(load(&n, "tail", UNITS, 8, -1_000).await.status, 201);

    let (mut sold, mut calls_selling, mut deducts_selling) = (0, 0, 0);
    let mut i = 0;
    while sold < UNITS {
        let before = function_calls(n.redis());
        let resp = n
            .send(deduct_req("tail", &format!("t-{i}"), 1, &format!("k-{i}")))
            .await;
        calls_selling += function_calls(n.redis()) - before;
        deducts_selling += 1;
        i += 1;
        assert!(deducts_selling <= 2 * UNITS, "the units were not found");
        match resp.status {
            201 => sold += 1,
            409 => assert_eq!(problem_type(&resp), "sold-out", "{resp:?}"),
            other => panic!("unexpected {other}: {resp:?}"),
        }
    }
    eprintln!(
        "{kind:?}: {UNITS} units sold in {deducts_selling} deducts with {calls_selling} function calls"
    );
    assert!(
        calls_selling <= 2 * deducts_selling,
        "{calls_selling} calls for {deducts_selling} deducts"
    );

    // Sold out: the first deduct after the last unit learns it (one call), the rest cost none.
    let before = function_calls(n.redis());
    for j in 0..20 {
        let resp = n
            .send(deduct_req(
                "tail",
                &format!("late-{j}"),
                1,
                &format!("l-{j}"),
            ))
            .await;
        assert_eq!(
            (resp.status, problem_type(&resp).as_str()),
            (409, "sold-out")
        );
    }
    let after_sell_out = function_calls(n.redis()) - before;
    assert!(
        after_sell_out <= 1,
        "{after_sell_out} calls after the sell-out"
    );
}

/// After a sell-out, bursts of concurrent deducts in successive sold-out periods: each period
/// costs exactly one read (by the one request that holds the re-check lease; the others answer
/// from the stale knowledge meanwhile), none while the knowledge is fresh. Units that come back
/// are found within (partitions + 1) periods.
pub async fn sold_out_costs_one_call_per_period(kind: Kind) {
    const PERIOD_MS: u64 = 1_000;
    const BURST: usize = 40;
    let clock = NodeClock::manual();
    let options = NodeOptions {
        sold_out_ttl_ms: PERIOD_MS,
        clock: clock.clone(),
        ..NodeOptions::default()
    };
    let n = Node::start(kind, options).await;
    assert_eq!(load(&n, "last", 4, 4, -1_000).await.status, 201);
    let mut reservations = Vec::new();
    let mut i = 0;
    loop {
        let resp = n
            .send(deduct_req("last", &format!("s-{i}"), 1, &format!("k-{i}")))
            .await;
        i += 1;
        match resp.status {
            201 => reservations.push(
                resp.json_body()["reservation_id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            ),
            409 => break,
            other => panic!("unexpected {other}: {resp:?}"),
        }
        assert!(i < 64, "never sold out");
    }
    assert_eq!(reservations.len(), 4);

    let burst = |period: u64| {
        let n = &n;
        async move {
            let before = function_calls(n.redis());
            let answers = join_all((0..BURST).map(|j| {
                n.send(deduct_req(
                    "last",
                    &format!("p{period}-{j}"),
                    1,
                    &format!("k{period}-{j}"),
                ))
            }))
            .await;
            (answers, function_calls(n.redis()) - before)
        }
    };

    // Fresh: no call at all.
    let (answers, calls) = burst(0).await;
    assert!(answers.iter().all(|a| a.status == 409));
    assert_eq!(calls, 0, "a fresh sell-out reached Redis");
    // Each later period: one re-check, whatever the burst's size.
    for period in 1..=6 {
        clock.advance(PERIOD_MS);
        let (answers, calls) = burst(period).await;
        for a in &answers {
            assert_eq!(
                (a.status, a.header_value("flashcart-cache")),
                (409, Some("sold-out")),
                "{a:?}"
            );
        }
        assert_eq!(calls, 1, "period {period}");
    }

    // A unit comes back (a reservation released): a re-check finds it within partitions + 1
    // periods, and a buyer gets it.
    let back = flashcart_core::ids::ReservationId::parse(&reservations[0]).expect("id");
    n.inventory
        .release(
            &back,
            flashcart_core::inventory::ReleaseReason::Cancelled,
            flashcart_core::Now::Server,
        )
        .await
        .expect("release");
    let mut found = None;
    for period in 1..=5 {
        clock.advance(PERIOD_MS);
        let (answers, _) = burst(100 + period).await;
        if answers.iter().any(|a| a.status == 201) {
            found = Some(period);
            break;
        }
    }
    assert!(found.is_some(), "the unit that came back was never offered");
}
