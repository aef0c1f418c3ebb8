//! Redis paused mid-sale (SIGSTOP: a stalled server whose connections stay open), over HTTP
//! through the host and the built components: the stalled deduct is answered within the
//! request deadline with a retryable problem, never hangs; once Redis continues, the buyer's
//! retry with the same key gets exactly one reservation — the one the stalled call made when
//! Redis ran it, or a new one — and the stock adds up.

use flashcart_contract::node::{admin_state_req, deduct_req, load, problem_type};
use flashcart_contract::{Kind, Node, NodeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_redis_answers_retryably_and_the_retry_reserves_once() {
    let n = &Node::start(Kind::Http, NodeOptions::default()).await;
    assert_eq!(load(n, "paused", 10, 2, -1_000).await.status, 201);
    // Connections are open before the pause, as in a running sale.
    assert_eq!(n.send(deduct_req("paused", "a", 1, "ka")).await.status, 201);

    let servers = n.redis().servers();
    let redis = servers[0];
    redis.pause().expect("SIGSTOP");
    let stalled = n.send(deduct_req("paused", "b", 1, "kb")).await;
    redis.resume().expect("SIGCONT");
    assert!(
        matches!(
            (stalled.status, problem_type(&stalled).as_str()),
            (503, "inventory-unavailable") | (504, "component-timeout")
        ),
        "{stalled:?}"
    );

    let retry = n.send(deduct_req("paused", "b", 1, "kb")).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    let again = n.send(deduct_req("paused", "b", 1, "kb")).await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(
        again.json_body()["reservation_id"],
        retry.json_body()["reservation_id"]
    );
    assert_eq!(again.header_value("idempotent-replayed"), Some("true"));

    let state = n.send(admin_state_req("paused")).await.json_body();
    assert_eq!(
        state["totals"]["available"], 8,
        "one unit each for a and b: {state}"
    );
    assert_eq!(state["invariant_holds"], true, "{state}");
}
