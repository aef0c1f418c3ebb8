//! The whole flow and every problem type of the contract.

use std::collections::BTreeSet;

use flashcart_api::ApiRequest;
use flashcart_core::ids::{BuyerId, IdempotencyKey, Quantity, ReservationId, SkuId};
use flashcart_core::inventory::{RateLimit, ReleaseReason, ReserveRequest};
use flashcart_core::{KeySchema, Now};

use crate::node::{
    Kind, Node, NodeOptions, PROBLEM_TYPES, PSP_SECRET, admin_state_req, cancel_req, deduct_req,
    load, now_ms, order_req, payment_req, problem_type, redis_commands,
};

/// Admin load → stock check (miss, then cache hit) → deduct (and its replay) → order →
/// signed payment → order paid → admin state.
pub async fn admin_load_stock_deduct_order_pay(kind: Kind) {
    let n = &Node::start(kind, NodeOptions::default()).await;
    let loaded = load(n, "sneaker", 10, 4, -1_000).await;
    assert_eq!(loaded.status, 201, "{loaded:?}");
    assert_eq!(
        load(n, "sneaker", 10, 4, -1_000).await.status,
        409,
        "other sale window: conflict"
    );

    let stock = n.send(ApiRequest::new("GET", "/v1/stock/sneaker")).await;
    assert_eq!(stock.status, 200);
    assert_eq!(stock.json_body()["available"], 10);
    assert_eq!(stock.header_value("flashcart-cache"), Some("miss"));
    assert!(
        stock
            .header_value("cache-control")
            .is_some_and(|c| c.contains("stale-while-revalidate"))
    );
    let before = redis_commands(n.redis());
    let cached = n.send(ApiRequest::new("GET", "/v1/stock/sneaker")).await;
    assert_eq!(cached.header_value("flashcart-cache"), Some("hit"));
    assert_eq!(
        redis_commands(n.redis()),
        before,
        "a cache hit reached Redis"
    );

    let rsv = n.send(deduct_req("sneaker", "alice", 2, "k-1")).await;
    assert_eq!(rsv.status, 201, "{rsv:?}");
    let rid = rsv.json_body()["reservation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let replay = n.send(deduct_req("sneaker", "alice", 2, "k-1")).await;
    assert_eq!(
        (replay.status, replay.header_value("idempotent-replayed")),
        (201, Some("true"))
    );
    assert_eq!(replay.json_body()["reservation_id"], rid.as_str());

    let order = n.send(order_req(&rid, "alice", "o-1")).await;
    assert_eq!(order.status, 201, "{order:?}");
    let body = order.json_body();
    assert_eq!(
        (body["state"].as_str(), body["amount"].as_u64()),
        (Some("pending_payment"), Some(3998))
    );
    let oid = body["id"].as_str().expect("id").to_owned();

    let pay = serde_json::json!({
        "event_id": "evt_1", "type": "payment.succeeded", "order_id": oid, "amount": 3998, "currency": "EUR"
    });
    let paid = n.send(payment_req(&pay, PSP_SECRET, now_ms() / 1000)).await;
    assert_eq!(paid.status, 200, "{paid:?}");
    assert_eq!(paid.json_body()["outcome"], "paid");

    let got = n
        .send(ApiRequest::new("GET", &format!("/v1/orders/{oid}")))
        .await;
    assert_eq!(
        (got.status, got.json_body()["state"].as_str()),
        (200, Some("paid"))
    );

    let admin = n.send(admin_state_req("sneaker")).await;
    let state = admin.json_body();
    assert_eq!(
        (
            state["totals"]["sold"].as_u64(),
            state["totals"]["available"].as_u64()
        ),
        (Some(2), Some(8))
    );
    assert_eq!(state["invariant_holds"], true);
}

/// The buyer cancels an unpaid order: its units go back on sale, a repeat answers the same,
/// nobody else can cancel it, a paid order cannot be cancelled, bad input changes nothing.
pub async fn the_buyer_cancels_an_unpaid_order(kind: Kind) {
    let n = &Node::start(kind, NodeOptions::default()).await;
    assert_eq!(load(n, "boots", 10, 4, -1_000).await.status, 201);
    let ordered = |buyer: &'static str, qty: u64, key: &'static str| async move {
        let rsv = n.send(deduct_req("boots", buyer, qty, key)).await;
        assert_eq!(rsv.status, 201, "{rsv:?}");
        let rid = rsv.json_body()["reservation_id"]
            .as_str()
            .expect("id")
            .to_owned();
        let order = n.send(order_req(&rid, buyer, &format!("o-{key}"))).await;
        assert_eq!(order.status, 201, "{order:?}");
        order.json_body()["id"].as_str().expect("id").to_owned()
    };
    let levels = || async {
        let admin = n.send(admin_state_req("boots")).await.json_body();
        assert_eq!(admin["invariant_holds"], true, "{admin}");
        (
            admin["totals"]["available"].as_u64(),
            admin["totals"]["ordered"].as_u64(),
            admin["totals"]["sold"].as_u64(),
        )
    };
    let oid = ordered("alice", 2, "a-1").await;
    assert_eq!(levels().await, (Some(8), Some(2), Some(0)));

    // Refused, and nothing changes: another buyer, a bad body, the wrong method.
    let other = n.send(cancel_req(&oid, "mallory")).await;
    assert_eq!(
        (other.status, problem_type(&other).as_str()),
        (404, "unknown-order")
    );
    let bad = n.send(
        ApiRequest::new("POST", &format!("/v1/orders/{oid}/cancel"))
            .json(&serde_json::json!({ "buyer_id": "alice", "why": "changed my mind" })),
    );
    assert_eq!(bad.await.status, 400);
    let get = n
        .send(ApiRequest::new("GET", &format!("/v1/orders/{oid}/cancel")))
        .await;
    assert_eq!((get.status, get.header_value("allow")), (405, Some("POST")));
    assert_eq!(levels().await, (Some(8), Some(2), Some(0)));

    let cancelled = n.send(cancel_req(&oid, "alice")).await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.json_body()["state"], "cancelled");
    assert_eq!(cancelled.header_value("idempotent-replayed"), None);
    let again = n.send(cancel_req(&oid, "alice")).await;
    assert_eq!(
        (again.status, again.header_value("idempotent-replayed")),
        (200, Some("true"))
    );
    assert_eq!(again.json_body()["state"], "cancelled");
    assert_eq!(
        levels().await,
        (Some(10), Some(0), Some(0)),
        "units back on sale"
    );

    // Paid: too late to cancel.
    let paid = ordered("bob", 1, "b-1").await;
    let pay = serde_json::json!({
        "event_id": "evt_cancel_1", "type": "payment.succeeded", "order_id": paid,
        "amount": 1999, "currency": "EUR"
    });
    let answer = n.send(payment_req(&pay, PSP_SECRET, now_ms() / 1000)).await;
    assert_eq!(answer.json_body()["outcome"], "paid", "{answer:?}");
    let late = n.send(cancel_req(&paid, "bob")).await;
    assert_eq!(
        (late.status, problem_type(&late).as_str()),
        (409, "illegal-transition")
    );
    assert_eq!(levels().await, (Some(9), Some(0), Some(1)));
}

/// Every problem type of the contract, each with its status, at least once.
pub async fn every_problem_type_of_the_contract(kind: Kind) {
    let rate = Some(RateLimit {
        capacity: 3,
        refill_per_second: 1,
    });
    let mut node = Node::start(
        kind,
        NodeOptions {
            rate,
            ..NodeOptions::default()
        },
    )
    .await;
    let n = &node;
    let mut seen = BTreeSet::new();
    let mut expect = |resp: flashcart_api::ApiResponse, status: u16, kind: &str| {
        assert_eq!(
            (resp.status, problem_type(&resp).as_str()),
            (status, kind),
            "{resp:?}"
        );
        seen.insert(kind.to_owned());
    };
    assert_eq!(load(n, "one", 1, 1, -1_000).await.status, 201);
    assert_eq!(load(n, "later", 5, 1, 3_600_000).await.status, 201);
    assert_eq!(load(n, "over", 5, 1, -7_200_000).await.status, 201);
    assert_eq!(load(n, "plenty", 50, 4, -1_000).await.status, 201);

    expect(
        n.send(deduct_req("bad%20sku", "b", 1, "k")).await,
        400,
        "invalid-request",
    );
    expect(
        n.send(deduct_req("one", "b", 0, "k")).await,
        400,
        "invalid-request",
    );
    expect(
        n.send(deduct_req("one", "b", 1_000_000, "k")).await,
        400,
        "invalid-request",
    );
    let mut no_key = deduct_req("one", "b", 1, "k");
    no_key.headers.retain(|(n, _)| n != "idempotency-key");
    expect(n.send(no_key).await, 400, "idempotency-key-missing");
    expect(
        n.send(deduct_req("one", "b", 1, &"k".repeat(256))).await,
        400,
        "invalid-request",
    );
    let mut not_json = deduct_req("one", "b", 1, "k");
    not_json.headers.retain(|(n, _)| n != "content-type");
    let not_json = not_json.header("content-type", "text/plain");
    expect(n.send(not_json).await, 415, "unsupported-media-type");
    let mut huge = deduct_req("one", "b", 1, "k");
    huge.body = vec![b' '; 64 * 1024];
    expect(n.send(huge).await, 413, "payload-too-large");
    let mut garbage = deduct_req("one", "b", 1, "k");
    garbage.body = b"{\"buyer_id\":".to_vec();
    expect(n.send(garbage).await, 400, "invalid-request");
    expect(
        n.send(deduct_req("ghost", "b", 1, "k")).await,
        404,
        "unknown-sku",
    );
    expect(
        n.send(ApiRequest::new("GET", "/v1/stock/ghost")).await,
        404,
        "unknown-sku",
    );
    // Each buyer has a bucket of 3 deducts; use a buyer per check until the rate limit's own.
    expect(
        n.send(deduct_req("later", "b1", 1, "k")).await,
        409,
        "not-on-sale",
    );
    expect(
        n.send(deduct_req("over", "b2", 1, "k")).await,
        410,
        "sale-ended",
    );
    expect(
        n.send(deduct_req("one", "b3", 2, "k-two")).await,
        409,
        "insufficient-stock",
    );
    assert_eq!(n.send(deduct_req("one", "b4", 1, "k1")).await.status, 201);
    expect(
        n.send(deduct_req("one", "b4", 2, "k1")).await,
        422,
        "idempotency-key-reused",
    );
    expect(
        n.send(deduct_req("one", "c", 1, "k1")).await,
        409,
        "sold-out",
    );
    assert_eq!(n.send(deduct_req("plenty", "d", 2, "d1")).await.status, 201);
    expect(
        n.send(deduct_req("plenty", "d", 1, "d2")).await,
        409,
        "purchase-limit-reached",
    );
    expect(
        n.send(deduct_req("plenty", "d", 1, "d3")).await,
        409,
        "purchase-limit-reached",
    );
    let limited = n.send(deduct_req("plenty", "d", 1, "d4")).await;
    assert!(
        limited
            .header_value("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1))
    );
    assert_eq!(
        limited.header_value("ratelimit-policy"),
        Some("\"buyer\";q=3;w=3")
    );
    assert!(
        limited
            .header_value("ratelimit")
            .is_some_and(|v| v.starts_with("\"buyer\";r=0;t="))
    );
    expect(limited, 429, "rate-limited");

    // In flight: a reserve whose first step ran and whose process died moments ago.
    let schema = KeySchema::default();
    let sku = SkuId::parse("single").expect("sku");
    let stranger = (0..)
        .map(|i| format!("s{i}"))
        .find(|b| schema.home_of_buyer(&BuyerId::parse(b).expect("b")) != schema.home_of_sku(&sku))
        .expect("buyer");
    assert_eq!(load(n, "single", 1, 1, -1_000).await.status, 201);
    let stuck = deduct_req("single", &stranger, 1, "stuck");
    let request = ReserveRequest {
        request: None,
        sku: SkuId::parse("single").expect("sku"),
        buyer: BuyerId::parse(&stranger).expect("buyer"),
        quantity: Quantity::new(1).expect("q"),
        key: IdempotencyKey::parse("stuck").expect("key"),
        fingerprint: flashcart_core::fingerprint("single", &stuck.body),
    };
    n.inventory
        .reserve_at_home(&request, Now::Server)
        .await
        .expect("first step");
    expect(n.send(stuck).await, 409, "idempotency-key-in-flight");

    let rsv = n.send(deduct_req("plenty", "f", 1, "f1")).await.json_body()["reservation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let ghost = "rsv_01_0123456789abcdef_plenty";
    expect(
        n.send(order_req(ghost, "f", "o0")).await,
        404,
        "unknown-reservation",
    );
    expect(
        n.send(order_req("not-an-id", "f", "o0")).await,
        400,
        "invalid-request",
    );
    let order = n.send(order_req(&rsv, "f", "o1")).await;
    assert_eq!(order.status, 201, "{order:?}");
    let oid = order.json_body()["id"].as_str().expect("id").to_owned();
    expect(
        n.send(order_req(&rsv, "f", "o2")).await,
        409,
        "reservation-already-ordered",
    );
    let pay = serde_json::json!({
        "event_id": "evt_every_1", "type": "payment.succeeded", "order_id": oid,
        "amount": 1999, "currency": "EUR"
    });
    let paid = n.send(payment_req(&pay, PSP_SECRET, now_ms() / 1000)).await;
    assert_eq!(paid.json_body()["outcome"], "paid", "{paid:?}");
    expect(
        n.send(cancel_req(&oid, "f")).await,
        409,
        "illegal-transition",
    );
    let gone = n.send(deduct_req("plenty", "g", 1, "g1")).await.json_body()["reservation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    n.inventory
        .release(
            &ReservationId::parse(&gone).expect("id"),
            ReleaseReason::Cancelled,
            Now::Server,
        )
        .await
        .expect("release");
    expect(
        n.send(order_req(&gone, "g", "o3")).await,
        410,
        "reservation-gone",
    );
    expect(
        n.send(ApiRequest::new(
            "GET",
            "/v1/orders/ord_02_0123456789abcdef_plenty",
        ))
        .await,
        404,
        "unknown-order",
    );
    expect(
        n.send(ApiRequest::new("DELETE", "/v1/orders")).await,
        405,
        "method-not-allowed",
    );
    expect(
        n.send(ApiRequest::new("GET", "/v1/stock/a/b/c")).await,
        404,
        "not-found",
    );
    // An unknown route is answered by the app (spin.toml's catch-all), not by the runtime:
    // Spin's own 404 is plain text, so the component's problem body is what both give.
    // (`/` itself is the live sale page.)
    for path in ["/nope", "/v2/stock/one", "/v1"] {
        let unknown = n.send(ApiRequest::new("GET", path)).await;
        assert_eq!(
            unknown.json_body()["detail"],
            "no such route",
            "{path}: {unknown:?}"
        );
        expect(unknown, 404, "not-found");
    }

    expect(
        n.send(ApiRequest::new("GET", "/v1/admin/skus/one")).await,
        401,
        "unauthorized",
    );
    expect(
        n.send(
            ApiRequest::new("GET", "/v1/admin/skus/one").header("authorization", "Bearer wrong"),
        )
        .await,
        401,
        "unauthorized",
    );
    let conflict = load(n, "one", 2, 1, -1_000).await;
    expect(conflict, 409, "sku-conflict");
    // Each field in its range, but they disagree: more segments than units.
    let inconsistent = load(n, "few", 2, 4, -1_000).await;
    assert_eq!(
        inconsistent.json_body()["field"],
        "segments",
        "{inconsistent:?}"
    );
    expect(inconsistent, 422, "inconsistent-request");
    let unsigned = ApiRequest::new("POST", "/v1/payments/callback").json(&serde_json::json!({}));
    expect(n.send(unsigned).await, 400, "invalid-signature");

    // A partition fenced after a Redis restart (its guard set as settlement sets a lost one):
    // 503 with Retry-After, nothing taken; decided again once settlement has checked it.
    let home = KeySchema::default().home_of_buyer(&BuyerId::parse("fenced").expect("buyer"));
    n.inventory.guard(home, true).await.expect("guard");
    let fenced = n.send(deduct_req("plenty", "fenced", 1, "fz")).await;
    assert_eq!(fenced.header_value("retry-after"), Some("1"), "{fenced:?}");
    expect(fenced, 503, "inventory-recovering");
    assert_eq!(
        n.inventory.verify(home, None).await,
        Ok(flashcart_core::recovery::Verified::Lifted)
    );
    assert_eq!(
        n.send(deduct_req("plenty", "fenced", 1, "fz")).await.status,
        201
    );

    // Redis without the function library: 503, and the body names no internals (the
    // client's message names the function and the server; the log has it).
    for server in n.redis().servers() {
        redis::cmd("FUNCTION")
            .arg("FLUSH")
            .exec(&mut server.connection().expect("redis"))
            .expect("function flush");
    }
    let flushed = n
        .send(ApiRequest::new("GET", "/v1/stock/never-cached"))
        .await;
    assert_eq!(
        flushed.json_body()["detail"],
        flashcart_core::problem::UNAVAILABLE_DETAIL,
        "{flushed:?}"
    );
    expect(flushed, 503, "inventory-unavailable");

    // Redis gone: 503, retryable.
    node.kill_redis();
    let n = &node;
    expect(
        n.send(deduct_req("plenty", "h", 1, "h1")).await,
        503,
        "inventory-unavailable",
    );

    let all: BTreeSet<String> = PROBLEM_TYPES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(seen, all);
}
