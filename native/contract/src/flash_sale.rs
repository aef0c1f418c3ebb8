//! 2 000 concurrent buyers for 50 units through the edge; then, with the SKU sold out at the
//! node, a burst of deducts that makes no Redis call at all.

use std::sync::Arc;

use flashcart_core::inventory::RateLimit;

use crate::node::{
    Kind, Node, NodeOptions, admin_state_req, command_calls, deduct_req, function_calls, load,
    problem_type,
};

/// 2 000 concurrent buyers for 50 units: exactly 50 reservations, the books balance; then,
/// with the SKU sold out at the node, 500 more deducts make no Redis call at all.
pub async fn two_thousand_buyers_fifty_units_then_no_redis_calls(kind: Kind) {
    let options = NodeOptions {
        rate: Some(RateLimit {
            capacity: 5,
            refill_per_second: 1,
        }),
        sold_out_ttl_ms: 60_000,
        ..NodeOptions::default()
    };
    let n = Arc::new(Node::start(kind, options).await);
    assert_eq!(load(&n, "drop", 50, 16, -1_000).await.status, 201);

    let calls_before = function_calls(n.redis());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2_000 {
        let n = Arc::clone(&n);
        tasks.spawn(async move {
            n.send(deduct_req(
                "drop",
                &format!("buyer-{i}"),
                1,
                &format!("k-{i}"),
            ))
            .await
        });
    }
    let (mut created, mut sold_out) = (0, 0);
    while let Some(resp) = tasks.join_next().await {
        let resp = resp.expect("task");
        match resp.status {
            201 => created += 1,
            409 => {
                assert!(
                    matches!(
                        problem_type(&resp).as_str(),
                        "sold-out" | "insufficient-stock"
                    ),
                    "{resp:?}"
                );
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {resp:?}"),
        }
    }
    assert_eq!((created, sold_out), (50, 1_950));
    eprintln!(
        "{kind:?}: 2000 deducts for 50 units made {} function calls",
        function_calls(n.redis()) - calls_before
    );
    let state = n.send(admin_state_req("drop")).await.json_body();
    assert_eq!(
        (
            state["totals"]["available"].as_u64(),
            state["totals"]["reserved"].as_u64()
        ),
        (Some(0), Some(50))
    );
    assert_eq!(state["invariant_holds"], true);

    // The node knows the SKU is sold out: a burst of deducts answers from the edge.
    let before = command_calls(n.redis());
    for i in 0..500 {
        let resp = n
            .send(deduct_req(
                "drop",
                &format!("late-{i}"),
                1,
                &format!("l-{i}"),
            ))
            .await;
        assert_eq!(
            (resp.status, resp.header_value("flashcart-cache")),
            (409, Some("sold-out"))
        );
    }
    let mut after = command_calls(n.redis());
    // The INFO calls that read the counters are the only commands allowed to move.
    let mut before = before;
    before.remove("info");
    after.remove("info");
    assert_eq!(after, before, "the burst reached Redis");
}
